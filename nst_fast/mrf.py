"""MRF style loss (Li and Wand 2016, "Combining Markov Random Fields and
Convolutional Neural Networks for Image Synthesis"; pystiche's MRFLoss).

Each k x k patch of the output's features is pulled toward the style patch most
like it, the one with the largest normalised cross-correlation:

  E_l = 1 / (P D) * sum_i |p_i - s_NN(i)|^2

over the P output patches taken every `stride` positions, each of D = N_l k^2
values. The nearest neighbours are searched again at every step and are not
differentiated. With several styles, E_l = sum_r b_r E_lr, each style with its
own neighbours.
"""
from typing import Sequence

import torch
import torch.nn.functional as F

from .reference import accum_dtype

PATCH = 3
STRIDE = 2
SEARCH_CHUNK_BYTES = 64 << 20  # the largest block of patch similarities formed at once


def patches(features: torch.Tensor, patch: int = PATCH, stride: int = STRIDE) -> torch.Tensor:
    """(1, C, H, W) features -> (P, C * patch^2) patches, float32 (float64 for float64)."""
    if features.dim() != 4 or features.shape[0] != 1:
        raise ValueError(f"features must be (1, C, H, W), got shape {tuple(features.shape)}")
    if min(features.shape[-2:]) < patch:
        raise ValueError(f"features of {features.shape[-1]}x{features.shape[-2]} positions have no "
                         f"{patch}x{patch} patch")
    with torch.autocast(features.device.type, enabled=False):
        return F.unfold(features.to(accum_dtype(features.dtype)), patch, stride=stride)[0].T


def nearest(queries: torch.Tensor, normalised: torch.Tensor) -> torch.Tensor:
    """Index of the row of `normalised` (unit rows) most correlated with each query row.
    Queries need no normalising: it scales a row's similarities, not their order."""
    rows = max(1, SEARCH_CHUNK_BYTES // (4 * normalised.shape[0]))
    found = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    with torch.autocast(queries.device.type, enabled=False):
        for start in range(0, queries.shape[0], rows):
            found[start:start + rows] = (queries[start:start + rows] @ normalised.T).argmax(1)
    return found


class MRFStyle:
    """The MRF style loss of one layer against the patches of one or more styles'
    features (`weights`: their blend weights); call it with the output's
    (1, C, H, W) features to get E_l, a float32 scalar (float64 for float64)."""

    def __init__(self, style_features: Sequence[torch.Tensor], weights: Sequence[float],
                 patch: int = PATCH, stride: int = STRIDE):
        self.patch, self.stride = patch, stride
        self.styles = []
        for features, weight in zip(style_features, weights):
            targets = patches(features.detach(), patch, stride)
            normalised = targets / targets.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.styles.append((targets, normalised, float(weight)))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        p = patches(features, self.patch, self.stride)
        with torch.no_grad():
            found = [nearest(p.detach(), normalised) for _, normalised, _ in self.styles]
        loss = p.new_zeros(())
        for (targets, _, weight), index in zip(self.styles, found):
            loss = loss + weight * (p - targets[index]).square().mean()
        return loss
