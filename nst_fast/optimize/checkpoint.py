"""Checkpoints of a run: the image being optimised, the optimiser's state and the
loop's bookkeeping, tied by a fingerprint to the inputs and options that made them."""
import hashlib
import os
from typing import Optional

import torch

from ..errors import CheckpointMismatch, NstError
from ..runtime.files import atomic_write
from .options import FINGERPRINT_FIELDS

VERSION = 1
# Options that change what is optimised; steps and sizes may differ on resume.
FINGERPRINT_OPTIONS = FINGERPRINT_FIELDS


def identify(content, styles, opts, transfer) -> tuple:
    """(fingerprint, settings) of a run: the hash a checkpoint must match to be resumed,
    and what went into it by name ("images" and each setting, as text), which a
    checkpoint keeps so that a mismatch can say what differs. content, styles: the
    images as images.identity gives them (their tensors, or a large image's digest)."""
    h = hashlib.sha256()
    for t in [content, *styles]:
        if isinstance(t, bytes):  # a large image's digest (images.identity)
            h.update(t)
            continue
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    options = [repr(getattr(opts, name)) for name in FINGERPRINT_OPTIONS]
    weights = transfer.weights
    if getattr(transfer, "weights_seed", None):  # seed 0 unnamed, so that earlier checkpoints still match
        weights = f"{weights} (seed {transfer.weights_seed})"
    network = [weights, transfer.convention, transfer.pooling, transfer.architecture]
    settings = {"images": h.copy().hexdigest(), **dict(zip(FINGERPRINT_OPTIONS, options)),
                "weights": os.path.basename(str(weights)),  # a file's name, not where it is
                **{name: repr(value) for name, value in zip(("convention", "pooling", "network", "padding"),
                                                            network[1:] + [transfer.padding])}}
    if transfer.padding != "zeros":  # so that checkpoints made before the option still match
        network.append(transfer.padding)
    h.update("|".join(map(str, options + network)).encode())
    return h.hexdigest(), settings


def _differences(saved: dict, now: dict) -> str:
    """"its precision was 'fp32', here 'tf32'; ..." for the settings that differ."""
    out = []
    for name, value in now.items():
        if name in saved and saved[name] != value:
            out.append("its images differ" if name == "images" else f"its {name} was {saved[name]}, here {value}")
    return "; ".join(out)


class _Writes:
    """A file's write(), keeping the first OSError it raises: torch.save reports a failed
    write (a full disk) as a RuntimeError of its own, which loses the errno."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self):
        self.f.flush()


def write(f, data: dict) -> None:
    """The checkpoint into the open binary file f; a failed write raises its OSError."""
    writes = _Writes(f)
    try:
        torch.save({"version": VERSION, **data}, writes)
    except RuntimeError:
        if writes.error is None:
            raise
        raise writes.error from None


def save(path, data: dict) -> None:
    atomic_write(path, lambda f: write(f, data), suffix=".ckpt")


# The fields resuming reads, and their types; the images and numbers that some runs add.
_FIELDS = {"fingerprint": str, "size": list, "scale_index": int, "step": int, "optimizer": dict,
           "rows_before": list, "history_rows": list,
           **dict.fromkeys(("x", "best", "best_loss", "bad_streak", "history"), torch.Tensor)}
_KINDS = {str: "text", list: "a list", int: "a whole number", dict: "a dict", torch.Tensor: "a tensor"}
_IMAGES = ("x", "best", "result", "average")  # (1, 3, H, W) at the checkpoint's size
_NUMBERS = ("best_loss", "bad_streak", "average_weight")  # 0-dim


def _problem(data: dict) -> Optional[str]:
    """What keeps data from being resumed: a field missing, or of another type or shape
    than a run writes; None if nothing."""
    return (_field_problem(data) or _size_problem(data["size"], data["step"]) or _tensor_problem(data)
            or _optimiser_problem(data["optimizer"]))


def _not_a(name, value, kind) -> Optional[str]:
    if isinstance(value, kind) and not isinstance(value, bool):
        return None
    return f"{name} is a {type(value).__name__}, not {_KINDS[kind]}"


def _field_problem(data: dict) -> Optional[str]:
    for key, kind in _FIELDS.items():
        if key not in data:
            return f"{key} is missing"
        problem = _not_a(key, data[key], kind)
        if problem:
            return problem
    for key in _IMAGES + _NUMBERS:
        problem = _not_a(key, data[key], torch.Tensor) if key in data else None
        if problem:
            return problem
    for key in ("rows_before", "history_rows"):
        if not all(isinstance(row, dict) for row in data[key]):
            return f"{key} holds something other than rows of losses"
    return None


def _size_problem(size: list, step: int) -> Optional[str]:
    if len(size) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size):
        return f"size is {size!r}, not [height, width]"
    return f"step is {step}, not a number of steps" if step < 0 else None


def _tensor_problem(data: dict) -> Optional[str]:
    image = (1, 3, *data["size"])
    for key in _IMAGES:
        if key in data and data[key].shape != image:
            return f"{key} has shape {tuple(data[key].shape)}, the size says {image}"
    for key in _NUMBERS:
        if key in data and data[key].dim() != 0:
            return f"{key} has shape {tuple(data[key].shape)}, not one number"
    if data["best_loss"].isnan():
        return "best_loss is NaN"
    history, step = data["history"], data["step"]
    if history.dim() != 2 or history.size(0) != step:
        return f"history has shape {tuple(history.shape)}, not a row for each of the {step} steps"
    return None


def _optimiser_problem(state: dict) -> Optional[str]:
    """Its entries' names and shapes are the optimiser's to check (optim.*.load_state_dict)."""
    if not state:
        return "the optimiser state is missing"
    for name, value in state.items():
        if not torch.is_tensor(value):
            return f"the optimiser's {name} is a {type(value).__name__}, not a tensor"
    return None


def _damaged(path, problem) -> NstError:
    return NstError(f"checkpoint {path} is damaged: {problem}")


def restore(path, saved: dict, state, x, optimizer) -> None:
    """Continue the run of state (a steps.LoopState), x and optimizer from `saved`, read
    from path by load(); a tensor that does not fit this run is an NstError naming the file."""
    try:
        state.load(saved, x, optimizer)
    except ValueError as exc:
        raise _damaged(path, exc) from None


def load(path, expected_fingerprint: str, settings: dict = None) -> dict:
    """The checkpoint at path if it is of this run (identify()'s fingerprint); settings
    (identify()'s) name what differs when it is not."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NstError(f"no such checkpoint: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise NstError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception:  # torch's own message suggests weights_only=False, which is no advice for a user
        raise NstError(f"{path} is not a readable nst-fast checkpoint") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), int):
        raise NstError(f"{path} is not a readable nst-fast checkpoint")
    if data["version"] != VERSION:
        raise NstError(f"{path} is a checkpoint of another version of nst-fast ({data['version']})")
    problem = _problem(data)
    if problem:
        raise _damaged(path, problem)
    if data["fingerprint"] != expected_fingerprint:
        saved = data.get("settings")
        why = _differences(saved, settings) if isinstance(saved, dict) and settings else ""
        raise CheckpointMismatch(f"checkpoint {path} is from another run: "
                                 f"{why or 'its images or options differ from these'}")
    return data
