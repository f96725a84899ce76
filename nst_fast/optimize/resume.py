"""Where a run resumed from a checkpoint starts: at the checkpoint's scale exactly where
it stopped, or at a larger scale from its image, upscaled."""
import dataclasses
from typing import Optional

import torch

from ..errors import NstError


@dataclasses.dataclass
class Start:
    """Where a run starts."""

    scale_index: int = 0  # the first scale to run (len(scales): none is left)
    image: Optional[torch.Tensor] = None  # the image it continues from (upscaled), or None
    history: list = dataclasses.field(default_factory=list)  # the history rows before it
    restore: bool = False  # whether the first scale continues the checkpoint's own steps


def start(saved: Optional[dict], scale_hws: list, steps_at, path) -> Start:
    """The Start of a run of scales of (H, W) scale_hws, from the checkpoint `saved`
    (checkpoint.load's dict, read from `path`; None: from the beginning). steps_at(i):
    the steps asked for at scale i."""
    if saved is None:
        return Start()
    size = tuple(saved["size"])
    for index, hw in enumerate(scale_hws):
        if tuple(hw) == size and saved["step"] >= steps_at(index):
            # This scale holds the steps asked for, or more: go on from its image as from a finished scale.
            return Start(index + 1, _image(saved), saved["history_rows"])
        if tuple(hw) == size:
            return Start(index, None, saved["rows_before"], restore=True)
        if max(hw) > max(size):  # a larger scale than the checkpoint's: from its image, upscaled
            return Start(index, _image(saved), saved["history_rows"])
    raise NstError(f"checkpoint {path} is larger than the requested size; ask for its size or more")


def _image(saved: dict) -> torch.Tensor:
    return saved.get("result", saved["best"])
