"""Pure-PyTorch versions of every nst_fast op: the fallback and the test oracle.

They follow the same contract as the compiled ops (see csrc/include/nst_fast/style_loss.h):
features (B, C, M); Gram, residual and loss in float32 (float64 for float64
features), whatever the feature dtype.
"""
import torch


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram(features: torch.Tensor) -> torch.Tensor:
    f = features.to(accum_dtype(features.dtype))
    with torch.autocast(f.device.type, enabled=False):  # G - A must not be rounded to bf16
        return torch.bmm(f, f.transpose(1, 2))


def style_loss_forward(features, target, scale: float):
    residual = gram(features) - target
    return scale * residual.square().sum(), residual


def style_loss_backward(grad_loss, residual, features, scale: float):
    f = features.to(residual.dtype)
    with torch.autocast(f.device.type, enabled=False):
        return (4.0 * scale * grad_loss * torch.bmm(residual, f)).to(features.dtype)


def style_loss_relu_backward(grad_loss, residual, features, scale: float, grad_features=None):
    """The backward of relu(x) = features with the style loss taken at features, where
    grad_features reaches them from the layers above (None: nothing does)."""
    grad = style_loss_backward(grad_loss, residual, features, scale)
    if grad_features is not None:
        grad = grad + grad_features
    return torch.ops.aten.threshold_backward(grad, features, 0)
