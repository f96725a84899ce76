"""One L-BFGS step in place: torch.ops.nst_fast.lbfgs_step (csrc/include/nst_fast/lbfgs.h),
four passes over the image instead of the ~120 small ops of reference.lbfgs_step, which
on a GPU are ~120 kernel launches. The state is nst_fast.optimize.optim.LBFGS's.
"""
import torch

from . import backend, reference

if backend.extension_loaded():

    @torch.library.register_fake("nst_fast::lbfgs_step")
    def _lbfgs_step_fake(x, loss, grad, x_a, f_a, g_a, d, t, W, WW, valid, idx, steps, accepted, workspace, lr, c1,
                         backtrack, eps, max_step):
        return None  # every output is an argument updated in place


def workspace_size(n: int, history: int, device):
    """Elements (float64) of the op's workspace for n elements, or None where the op
    does not run (no kernel, a long history): the reference runs."""
    if not backend.runs_extension("lbfgs_step", device):
        return None
    size = torch.ops.nst_fast.lbfgs_workspace_size(n, history)
    return None if size < 0 else size


def new_workspace(x: torch.Tensor, history: int):
    """The op's workspace for steps on x, or None where the op does not run."""
    if x.dtype not in (torch.float32, torch.float64):
        return None
    size = workspace_size(x.numel(), history, x.device)
    return None if size is None else torch.zeros(size, dtype=torch.float64, device=x.device)


def lbfgs_step(x, loss, grad, x_a, f_a, g_a, d, t, W, WW, valid, idx, steps, accepted, workspace, lr: float,
               c1: float, backtrack: float, eps: float, max_step: float) -> None:
    """The op where it has a workspace (new_workspace) and x and grad are in the state's
    dtype, x contiguous; reference.lbfgs_step elsewhere."""
    dtype = x_a.dtype
    if workspace is None or x.dtype != dtype or grad.dtype != dtype or not x.is_contiguous():
        reference.lbfgs_step(x, loss, grad, x_a, f_a, g_a, d, t, W, WW, valid, idx, steps, accepted, lr, c1,
                             backtrack, eps, max_step)
        return
    # The image's gradient comes back channels-last from the network: one copy.
    grad = grad.detach().contiguous()
    torch.ops.nst_fast.lbfgs_step(x.view(-1), loss.detach().reshape(()).to(dtype), grad.view(-1), x_a, f_a, g_a, d,
                                  t, W, WW, valid, idx, steps, accepted, workspace, lr, c1, backtrack, eps, max_step)
