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


def load(path, expected_fingerprint: str) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NstError(f"no such checkpoint: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise NstError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise NstError(f"{path} is not an nst_fast checkpoint (or one of another version)")
    if data["fingerprint"] != expected_fingerprint:
        raise CheckpointMismatch(f"checkpoint {path} is from another run: its images or options differ from these")
    return data
