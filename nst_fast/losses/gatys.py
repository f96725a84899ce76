"""The Gatys losses (DESIGN.md):

  content  L_c = 1/2 * sum (F - P)^2                       at each content layer
  style    E_l = 1 / (4 N_l^2 M_l^2) * sum (G_l - A_l)^2   N_l channels, M_l = H_l * W_l
  total    alpha * sum_c v_c L_c + beta * sum_l w_l E_l + tv_weight * TV(x)

A_l is the style image's Gram matrix rescaled by M_l / M_style, so a style
image of another size than the output gives the same per-position statistics.

Spatial control (Gatys et al. 2017, guided Gram matrices): style r applies where
its mask T_r is, E_l = sum_r b_r E_lr with E_lr computed from the masked features
F * T_r, M_l replaced by the masked positions sum T_r^2 and A_lr the style's
per-position Gram over that many positions; b_r are the style blend weights.
"""
from typing import NamedTuple

import torch
from torch import nn

from ..ops import style_loss as ops


def style_scale(channels: int, positions: int) -> float:
    return 1.0 / (4.0 * channels**2 * positions**2)


class _ContentLoss(torch.autograd.Function):
    """1/2 sum (F - P)^2 by mse_loss (one op where the expression takes four), with its
    gradient F - P in the features' layout: mse_loss's own backward writes it contiguous,
    and a contiguous gradient meeting channels-last activations makes the ReLU's backward
    and the sum with the gradient from above take strided loops (~15x slower on a CPU)."""

    @staticmethod
    def forward(ctx, features, target):
        ctx.save_for_backward(features, target)
        return 0.5 * nn.functional.mse_loss(features.float(), target, reduction="sum")

    @staticmethod
    def backward(ctx, grad):
        features, target = ctx.saved_tensors
        return torch.sub(features, target).mul_(grad).to(features.dtype), None


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _ContentLoss.apply(features, target)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences between neighbouring pixels."""
    dh = image[..., 1:, :] - image[..., :-1, :]
    dw = image[..., :, 1:] - image[..., :, :-1]
    return dh.float().square().sum() + dw.float().square().sum()


class GuidedStyle(NamedTuple):
    """One style's share of a style layer's loss under spatial control."""

    mask: torch.Tensor  # (1, 1, H, W) at the layer's resolution
    target: torch.Tensor  # the style's Gram matrix over `positions` positions, fp32
    weight: float  # its blend weight
    positions: float  # sum of mask^2: the positions the mask covers


class WeightedSum:
    """Several losses of one layer, weighted: features -> sum_r b_r E_r(features)."""

    def __init__(self, terms):
        self.terms = list(terms)  # [(b_r, E_r), ...]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        total = features.new_zeros((), dtype=torch.float32)
        for weight, term in self.terms:
            total = total + weight * term(features)
        return total


def gram_target(style_features: torch.Tensor, output_positions: float) -> torch.Tensor:
    """The style image's Gram matrix, rescaled to the output's number of positions."""
    positions = style_features.shape[-2] * style_features.shape[-1]
    return ops.gram(style_features.float()) * (output_positions / positions)


class _NormalizeGrad(torch.autograd.Function):
    """Identity forward; backward rescales the gradient of one weighted loss term so
    that its unweighted part has unit L1 norm: weight * dE / (|dE|_1 + 1e-8), as
    jcjohnson/neural-style's -normalize_gradients does per loss layer."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        norm = grad.float().abs().sum() / ctx.weight  # |dE|_1, the loss weight taken out
        return (grad / (norm + 1e-8)).to(grad.dtype), None


def normalized_gradient(features: torch.Tensor, weight: float) -> torch.Tensor:
    """`features`, with the gradient of a loss term weighted by `weight` normalised."""
    return _NormalizeGrad.apply(features, weight) if weight > 0 else features


class GatysLoss(nn.Module):
    """Total loss of an image against fixed content features and style Gram targets.
    normalize_gradients: rescale each layer's loss gradient to unit L1 norm (times
    its weight) before it enters the network's backward."""

    fuse_relu = True  # False: the ReLUs and the style losses after them run separately (A/B runs)

    def __init__(self, vgg, content_targets: dict, style_targets: dict, content_weights: dict,
                 style_weights: dict, alpha: float, beta: float, tv_weight: float,
                 normalize_gradients: bool = False):
        """style_targets: {layer: Gram target}, or {layer: [GuidedStyle, ...]} under
        spatial control, or {layer: a callable features -> E_l} (the W2 and MRF losses)."""
        super().__init__()
        self.normalize_gradients = normalize_gradients
        self.vgg = vgg
        self.content_targets = content_targets
        self.style_targets = style_targets
        self.content_weights = content_weights
        self.style_weights = style_weights
        self.alpha, self.beta, self.tv_weight = alpha, beta, tv_weight
        self._constants = {}  # (what, device) -> weights of the terms, or zero

    def part_names(self):
        """The keys of forward()'s parts, in a fixed order (the loss-history columns)."""
        return ([f"content:{n}" for n in self.content_targets] + [f"style:{n}" for n in self.style_targets]
                + ["content", "style", "tv", "total"])

    def _features(self, features, weight):
        return normalized_gradient(features, weight) if self.normalize_gradients else features

    def _constant(self, key, values, device):
        # Made at the first step, before any CUDA-graph capture (which forbids the copy).
        if key not in self._constants:
            self._constants[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return self._constants[key]

    def shown_terms(self) -> int:
        """How many of terms()'s terms are parts of their own (all but the TV term)."""
        return len(self.content_targets) + len(self.style_targets)

    def _term_weights(self):
        """The weights of terms() in each aggregate part: content, style, tv, total."""
        c, s = len(self.content_targets), len(self.style_targets)
        v = [self.content_weights[n] for n in self.content_targets]
        w = [self.style_weights[n] for n in self.style_targets]
        return {"content": v + [0.0] * (s + 1), "style": [0.0] * c + w + [0.0], "tv": [0.0] * (c + s) + [1.0],
                "total": [self.alpha * x for x in v] + [self.beta * x for x in w] + [self.tv_weight]}

    def history_weights(self, device) -> torch.Tensor:
        """(3, n): the content, style and tv parts from terms()'s n terms, as rows of weights."""
        rows = self._term_weights()
        return self._constant(("history", torch.device(device)), [rows["content"], rows["style"], rows["tv"]], device)

    def _fused_layers(self):
        """Style layers whose Gram loss runs inside the ReLU before it (ops.relu_style_loss)."""
        if self.normalize_gradients or not self.fuse_relu:
            return []
        return [name for name, target in self.style_targets.items()
                if isinstance(target, torch.Tensor) and self.vgg.tappable(name)]

    def _taps(self, fused: dict) -> dict:
        """{layer: a tap that runs its ReLU and style loss and puts the loss in fused}."""
        def tap(name):
            def run(x):
                scale = style_scale(x.shape[1], x.shape[2] * x.shape[3])
                act, fused[name] = ops.relu_style_loss(x, self.style_targets[name], scale)
                return act
            return run
        return {name: tap(name) for name in self._fused_layers()}

    def terms(self, image: torch.Tensor):
        """-> (total, terms): the loss and its terms (float32), one per content layer, one
        per style layer (part_names()'s order), then the TV term. total is their sum with
        the weights in three ops, however many terms (on a GPU each op is a kernel launch)."""
        fused = {}  # style layer -> its loss, from a tap
        taps = self._taps(fused)
        feats = self.vgg(image, taps)
        terms = []
        for name, target in self.content_targets.items():
            term = content_loss(self._features(feats[name], self.alpha * self.content_weights[name]), target)
            terms.append(term.to(image.device))  # from the layer's device, where the network is split
        for name, target in self.style_targets.items():
            f = self._features(feats[name], self.beta * self.style_weights[name])
            if name in fused:
                term = fused[name]
            elif callable(target):  # a WassersteinStyle, MRFStyle or WeightedSum of them
                term = target(f)
            elif isinstance(target, list):
                term = f.new_zeros((), dtype=torch.float32)
                for guide in target:
                    guided = f * guide.mask.to(f.dtype)
                    term = term + guide.weight * ops.style_loss(guided, guide.target,
                                                                style_scale(f.shape[1], guide.positions))
            else:
                term = ops.style_loss(f, target, style_scale(f.shape[1], f.shape[2] * f.shape[3]))
            terms.append(term.to(image.device))
        dev = image.device
        terms.append(tv_loss(image) if self.tv_weight else self._constant(("zero", dev), [0.0], dev)[0])
        stacked = torch.stack([t.float() for t in terms])
        # Not a matmul: autocast would take that to bf16.
        total = (stacked * self._constant(("total", dev), self._term_weights()["total"], dev)).sum()
        return total, stacked

    def forward(self, image: torch.Tensor):
        """-> (total, {"content": .., "style": .., "tv": .., "style:relu1_1": .., ...})"""
        total, terms = self.terms(image)
        sums = (terms * self.history_weights(image.device)).sum(1)
        values = torch.cat([terms[: self.shown_terms()], sums, total.reshape(1)])
        return total, dict(zip(self.part_names(), values.unbind()))
