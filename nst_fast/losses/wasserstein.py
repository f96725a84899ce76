"""Wasserstein-2 style loss (crowsonkb/style-transfer-pytorch's style loss).

A layer's style is the Gaussian N(mu, S) fitted to its features: the mean over
positions and the covariance. The loss is the squared 2-Wasserstein distance
between the output's Gaussian and the style's, per channel:

  E_l = (|mu - mu_s|^2 + tr S + tr S_s - 2 tr (S_s^1/2 S S_s^1/2)^1/2) / N_l

It compares the means apart from the covariances, and the covariances through
their square roots, so it grows with the features' square (as the content loss
does), where the Gram loss grows with their fourth power.

Both covariances get EPS times the style's mean variance added to the diagonal:
the output's covariance is singular where a layer has fewer positions than
channels, and tr A^1/2 has an unbounded gradient at a singular A.

The features' moments are summed in float32 (float64 for float64 features), the
C x C algebra after them in float64: the loss is a difference of traces that
nearly cancel near the style, and in float32 it came out 2% off at relu5_1 and
negative close to the style, with gradients off by 16-44%.
"""
from typing import NamedTuple, Optional, Sequence

import torch

from ..ops import style_loss as ops
from ..ops.reference import accum_dtype

EPS = 1e-3


class Moments(NamedTuple):
    """A layer's first and second raw moments over positions, float64. Unlike
    covariances, these blend linearly across style images."""

    mean: torch.Tensor  # (C,)
    second: torch.Tensor  # (C, C): E[f f^T]


def _flat(features: torch.Tensor) -> torch.Tensor:
    if features.dim() != 4 or features.shape[0] != 1:
        raise ValueError(f"features must be (1, C, H, W), got shape {tuple(features.shape)}")
    # squeeze, not [0]: select's backward would write the gradient into a fresh contiguous tensor
    return features.flatten(2).squeeze(0).to(accum_dtype(features.dtype))


class _RawMoments(torch.autograd.Function):
    """(mean, E[f f^T]) of (C, M) features, over the positions weighted by t^2 / sum t^2
    where a mask t (M,) is given. Autograd of g @ g.T would form two C x M gradients
    and add them; the backward here is one product, ((K + K^T) f + dmean) t^2 / sum t^2."""

    @staticmethod
    def forward(ctx, f, t):
        ctx.save_for_backward(f, t)
        if t is None:
            return f.mean(1), ops.gram(f[None])[0] / f.shape[1]
        total = t.square().sum()
        return f @ t.square() / total, ops.gram((f * t)[None])[0] / total

    @staticmethod
    def backward(ctx, grad_mean, grad_second):
        f, t = ctx.saved_tensors
        total = f.shape[1] if t is None else t.square().sum()
        sym = ((grad_second + grad_second.T) / total).to(f.dtype)
        with torch.autocast(f.device.type, enabled=False):
            # Channels-last features: (f^T sym)^T = sym f (sym is symmetric) in their layout;
            # a contiguous gradient would send the ReLU's backward down strided loops.
            product = (f.T @ sym).T if f.stride(0) == 1 and f.stride(1) != 1 else sym @ f
            grad = product.add_((grad_mean / total).to(f.dtype)[:, None])
        return (grad if t is None else grad.mul_(t.square())), None


def _raw_moments(f: torch.Tensor, t: Optional[torch.Tensor] = None):
    """(mean, E[f f^T]) of (C, M) features (weighted by the mask t), differentiable, in float64."""
    with torch.autocast(f.device.type, enabled=False):
        mean, second = _RawMoments.apply(f, None if t is None else t.to(f.dtype))
    return mean.double(), second.double()


def moments(features: torch.Tensor) -> Moments:
    return Moments(*_raw_moments(_flat(features).detach()))


def blend(parts: Sequence[Moments], weights: Sequence[float]) -> Moments:
    """The moments of the mixture of several styles' features, `weights` summing to 1."""
    mean = sum(w * m.mean for m, w in zip(parts, weights))
    second = sum(w * m.second for m, w in zip(parts, weights))
    return Moments(mean, second)


class _TraceSqrt(torch.autograd.Function):
    """tr A^1/2 of a symmetric positive definite A. The gradient, 1/2 A^-1/2, comes
    from the eigendecomposition directly: autograd through eigh would divide by
    the gaps between eigenvalues, which repeated eigenvalues make zero."""

    @staticmethod
    def forward(ctx, a):
        eigenvalues, vectors = torch.linalg.eigh(a)
        # Rounding leaves eigenvalues below eps * the largest meaningless (even negative).
        roots = eigenvalues.clamp_min(eigenvalues[-1] * torch.finfo(a.dtype).eps).sqrt()
        ctx.save_for_backward(vectors, roots)
        return roots.sum()

    @staticmethod
    def backward(ctx, grad):
        vectors, roots = ctx.saved_tensors
        return grad * ((vectors * (0.5 / roots)) @ vectors.T)


def trace_sqrt(a: torch.Tensor) -> torch.Tensor:
    return _TraceSqrt.apply(a)


def _sqrtm(a: torch.Tensor) -> torch.Tensor:
    eigenvalues, vectors = torch.linalg.eigh(a)
    return (vectors * eigenvalues.clamp_min(0).sqrt()) @ vectors.T


class WassersteinStyle:
    """The W2 style loss of one layer against fixed style moments: call it with the
    output's (1, C, H, W) features to get E_l, a float32 scalar (float64 for float64).

    mask: (1, 1, H, W) at the layer's resolution, for spatial control: the output's
    moments are taken over the positions weighted by mask^2, as the guided Gram
    matrices weight them (Gatys et al. 2017)."""

    def __init__(self, target: Moments, mask: Optional[torch.Tensor] = None):
        self.mask = None if mask is None else mask.flatten()
        mean, second = target.mean.double(), target.second.double()
        cov = second - torch.outer(mean, mean)
        self.channels = mean.numel()
        eye = torch.eye(self.channels, dtype=cov.dtype, device=cov.device)
        self.ridge = EPS * cov.diagonal().mean().clamp_min(1e-12) * eye
        cov = cov + self.ridge
        self.mean, self.cov_trace, self.cov_sqrt = mean, cov.trace(), _sqrtm(cov)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        mean, second = _raw_moments(_flat(features), self.mask)
        cov = second - torch.outer(mean, mean) + self.ridge
        with torch.autocast(cov.device.type, enabled=False):
            product = self.cov_sqrt @ cov @ self.cov_sqrt
        product = 0.5 * (product + product.T)  # symmetric to rounding, as eigh assumes
        distance = (mean - self.mean).square().sum() + cov.trace() + self.cov_trace - 2 * trace_sqrt(product)
        return (distance / self.channels).to(accum_dtype(features.dtype))
