"""One step's bookkeeping of the optimisation loop in place: torch.ops.nst_fast.loop_record_
(csrc/include/nst_fast/loop_record.h), one op where reference.loop_record_ runs eleven,
each a kernel launch on a GPU. The state is nst_fast.optimize.steps.LoopState's.
"""
import torch

from . import backend, reference

if backend.extension_loaded():

    @torch.library.register_fake("nst_fast::loop_record_")
    def _loop_record_fake(total, terms, weights, shown, best_loss, bad_streak, row, history, cursor, improved):
        return None  # every output is an argument updated in place


def loop_record_(total, terms, weights, shown: int, best_loss, bad_streak, row, history, cursor, improved) -> None:
    """The op where the extension runs it for the state's device, else reference.loop_record_."""
    args = (total, terms, weights, shown, best_loss, bad_streak, row, history, cursor, improved)
    if backend.runs_extension("loop_record_", best_loss.device):
        torch.ops.nst_fast.loop_record_(*args)
    else:
        reference.loop_record_(*args)
