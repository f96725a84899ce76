"""Checkpoints of a run: the image being optimised, the optimiser's state and the
loop's bookkeeping, tied by a fingerprint to the inputs and options that made them."""
import hashlib
import os

import torch

from .errors import CheckpointMismatch, NstError
from .files import atomic_write

VERSION = 1
# Options that change what is optimised; steps and sizes may differ on resume.
FINGERPRINT_OPTIONS = ("content_weight", "style_weight", "tv_weight", "content_layers", "style_layers",
                       "optimizer", "lr", "lbfgs_history", "normalize_gradients", "precision", "style_blend",
                       "style_scale", "style_size", "preserve_colors", "avg_decay", "style_loss", "mrf_variants")


def fingerprint(content, styles, opts, transfer) -> str:
    h = hashlib.sha256()
    for t in [content, *styles]:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    settings = [repr(getattr(opts, name)) for name in FINGERPRINT_OPTIONS]
    settings += [transfer.weights, transfer.convention, transfer.pooling, transfer.architecture]
    if transfer.padding != "zeros":  # so that checkpoints made before the option still match
        settings.append(transfer.padding)
    h.update("|".join(map(str, settings)).encode())
    return h.hexdigest()


def save(path, data: dict) -> None:
    atomic_write(path, lambda f: torch.save({"version": VERSION, **data}, f), suffix=".ckpt")


def _well_formed(data) -> bool:
    """Has data the fields, of the types and shapes, that resuming reads?"""
    fields = {"fingerprint": str, "size": list, "scale_index": int, "step": int, "optimizer": dict,
              "rows_before": list, "history_rows": list,
              **dict.fromkeys(("x", "best", "best_loss", "bad_streak", "history"), torch.Tensor)}
    if not all(isinstance(data.get(key), kind) for key, kind in fields.items()):
        return False
    optional = [data.get(key, data["x"]) for key in ("result", "average", "average_weight")]
    return (all(torch.is_tensor(t) for t in optional)
            and len(data["size"]) == 2 and all(isinstance(n, int) and n > 0 for n in data["size"])
            and data["x"].shape == data["best"].shape == (1, 3, *data["size"])
            and data["step"] >= 0 and data["history"].dim() == 2 and data["history"].size(0) == data["step"])


def load(path, expected_fingerprint: str) -> dict:
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
    if not _well_formed(data):
        raise NstError(f"{path} is not a readable nst-fast checkpoint")
    if data["fingerprint"] != expected_fingerprint:
        raise CheckpointMismatch(f"checkpoint {path} is from another run: its images or options differ from these")
    return data
