"""MRF style loss (Li and Wand 2016, "Combining Markov Random Fields and
Convolutional Neural Networks for Image Synthesis"; pystiche's MRFLoss).

Each k x k patch of the output's features is pulled toward the style patch most
like it, the one with the largest normalised cross-correlation:

  E_l = 1 / (P D) * sum_i |p_i - s_NN(i)|^2

over the P output patches taken every `stride` positions, each of D = N_l k^2
values. The nearest neighbours are searched again at every step and are not
differentiated. With several styles, E_l = sum_r b_r E_lr, each style with its
own neighbours (and, under spatial control, its own region of the output).
Optionally, as Li and Wand do, the style's patches also come from slightly
rotated and scaled copies of the style image (style_variants).
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..ops.reference import accum_dtype

PATCH = 3
STRIDE = 2
SEARCH_CHUNK_BYTES = 64 << 20  # the largest block of patch similarities formed at once
# Li and Wand's augmented style: the style image also rotated by -/+7.5 degrees and
# scaled by 0.95/1.05, every combination: 9 variants.
VARIANT_ANGLES = (-7.5, 0.0, 7.5)
VARIANT_SCALES = (0.95, 1.0, 1.05)


def style_variants(image: torch.Tensor) -> list:
    """(1, 3, H, W) -> the image rotated and scaled by each pair of VARIANT_ANGLES and
    VARIANT_SCALES (same size, borders filled by reflection, not black)."""
    out = []
    for angle in VARIANT_ANGLES:
        for scale in VARIANT_SCALES:
            if angle == 0.0 and scale == 1.0:
                out.append(image)
                continue
            a = math.radians(angle)
            aspect = image.shape[-1] / image.shape[-2]  # a rotation in pixels, in [-1, 1] coordinates
            theta = torch.tensor([[math.cos(a), -math.sin(a) / aspect, 0.0],
                                  [math.sin(a) * aspect, math.cos(a), 0.0]],
                                 dtype=image.dtype, device=image.device) / scale
            grid = F.affine_grid(theta[None], list(image.shape), align_corners=False)
            out.append(F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection",
                                     align_corners=False).clamp(0, 1))
    return out


class _GradInLayout(torch.autograd.Function):
    """Identity whose backward hands the gradient back channels-last where the input was:
    unfold's backward (fold) writes it contiguous, and a contiguous gradient meeting
    channels-last activations sends the ReLU's backward down strided loops."""

    @staticmethod
    def forward(ctx, x):
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


def patches(features: torch.Tensor, patch: int = PATCH, stride: int = STRIDE) -> torch.Tensor:
    """(1, C, H, W) features -> (P, C * patch^2) patches, float32 (float64 for float64)."""
    if features.dim() != 4 or features.shape[0] != 1:
        raise ValueError(f"features must be (1, C, H, W), got shape {tuple(features.shape)}")
    if min(features.shape[-2:]) < patch:
        raise ValueError(f"features of {features.shape[-1]}x{features.shape[-2]} positions have no "
                         f"{patch}x{patch} patch")
    with torch.autocast(features.device.type, enabled=False):
        return F.unfold(_GradInLayout.apply(features).to(accum_dtype(features.dtype)), patch, stride=stride)[0].T


def nearest(queries: torch.Tensor, normalised: torch.Tensor) -> torch.Tensor:
    """Index of the row of `normalised` (unit rows) most correlated with each query row.
    Queries need no normalising: it scales a row's similarities, not their order."""
    rows = max(1, SEARCH_CHUNK_BYTES // (4 * normalised.shape[0]))
    found = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    with torch.autocast(queries.device.type, enabled=False):
        for start in range(0, queries.shape[0], rows):
            found[start:start + rows] = (queries[start:start + rows] @ normalised.T).argmax(1)
    return found


def patch_centres(mask: torch.Tensor, patch: int = PATCH, stride: int = STRIDE) -> torch.Tensor:
    """A (1, 1, H, W) mask's value at the centre of each patch, in patches()'s order."""
    rows, cols = ((n - patch) // stride + 1 for n in mask.shape[-2:])
    c = patch // 2
    return mask[0, 0, c:c + stride * rows:stride, c:c + stride * cols:stride].flatten()


class MRFStyle:
    """The MRF style loss of one layer against the patches of one or more styles'
    features (`weights`: their blend weights); call it with the output's
    (1, C, H, W) features to get E_l, a float32 scalar (float64 for float64).
    A style may be a list of feature maps (its variants): their patches pool.

    masks: one (1, 1, H, W) mask per style at the layer's resolution, for spatial
    control: style r's term covers only the output patches its mask is on, each
    weighted by the mask at its centre, E_lr = sum_i w_i |p_i - s_NN(i)|^2 / (D sum_i w_i).
    """

    def __init__(self, style_features: Sequence[torch.Tensor], weights: Sequence[float],
                 masks: Optional[Sequence[torch.Tensor]] = None, patch: int = PATCH, stride: int = STRIDE):
        self.patch, self.stride = patch, stride
        self.styles = []
        for i, (features, weight) in enumerate(zip(style_features, weights)):
            variants = features if isinstance(features, (list, tuple)) else [features]
            targets = torch.cat([patches(v.detach(), patch, stride) for v in variants])
            normalised = targets / targets.norm(dim=1, keepdim=True).clamp_min(1e-12)
            rows = centre_weights = None
            if masks is not None:
                centres = patch_centres(masks[i], patch, stride)
                rows = centres.nonzero().flatten()
                if rows.numel() == 0:
                    continue  # the region has no patch at this depth
                centre_weights = centres[rows].to(targets.dtype)
                centre_weights = centre_weights / centre_weights.sum()
            self.styles.append((targets, normalised, float(weight), rows, centre_weights))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        p = patches(features, self.patch, self.stride)
        loss = p.new_zeros(())
        for targets, normalised, weight, rows, centre_weights in self.styles:
            mine = p if rows is None else p.index_select(0, rows)
            with torch.no_grad():
                index = nearest(mine.detach(), normalised)
            err = (mine - targets[index]).square()
            if centre_weights is None:
                loss = loss + weight * err.mean()
            else:
                loss = loss + weight * (err.mean(1) @ centre_weights)
        return loss
