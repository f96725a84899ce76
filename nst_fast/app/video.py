"""Video frames: start each frame from the one before, so that consecutive results
differ where the frames do and not by the optimiser repainting each one its own way
(flicker).

The start is the new frame plus the style the previous run added to its frame (its
output minus its content), moved with the camera: a global shift between the two
frames, found by phase correlation. A still or panning camera then starts from
the previous painting, moved into place; an object that moves on its own is
started from its new place, not left behind as a ghost of the old output. Where
the shift reveals new ground, the start is the new frame itself.
"""
from typing import Tuple

import torch


def global_shift(before: torch.Tensor, after: torch.Tensor) -> Tuple[int, int]:
    """The whole-pixel (dy, dx) that best moves `before` onto `after`, both (1, 3, H, W):
    after[y, x] ~ before[y - dy, x - dx]. Phase correlation of the grey images."""
    a, b = (t.double().mean(dim=1)[0] for t in (before, after))
    a, b = a - a.mean(), b - b.mean()
    cross = torch.fft.fft2(b) * torch.fft.fft2(a).conj()
    peak = torch.fft.ifft2(cross / cross.abs().clamp_min(1e-12)).real
    height, width = peak.shape
    index = int(peak.argmax())
    dy, dx = divmod(index, width)
    return (dy - height if dy > height // 2 else dy), (dx - width if dx > width // 2 else dx)


def _shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """image moved by (dy, dx), zeros where nothing moved in."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    if abs(dy) >= height or abs(dx) >= width:
        return out
    src_y, dst_y = slice(max(0, -dy), height - max(0, dy)), slice(max(0, dy), height - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), width - max(0, dx)), slice(max(0, dx), width - max(0, -dx))
    out[..., dst_y, dst_x] = image[..., src_y, src_x]
    return out


def carry_over(previous_content: torch.Tensor, previous_output: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The start for `content` given the frame before and its result, all (1, 3, H, W)
    at the output's size in [0, 1]."""
    dy, dx = global_shift(previous_content, content)
    style_added = _shifted(previous_output - previous_content, dy, dx)
    return (content + style_added).clamp(0, 1)
