"""Pure-PyTorch versions of every nst_fast op: the fallback where the compiled kernel
does not run (backend.runs_extension), and the oracle the tests hold the kernels to.

One function per op, named after it; csrc/register.cpp has the ops' schemas and
csrc/include/nst_fast/ their contracts. The style-loss ops take features (B, C, M)
and keep the Gram, residual and loss in float32 (float64 for float64 features),
whatever the feature dtype (style_loss.h).
"""
import torch
import torch.nn.functional as F


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram(features: torch.Tensor) -> torch.Tensor:
    """nst_fast::gram: G = F F^T per batch item."""
    f = features.to(accum_dtype(features.dtype))
    with torch.autocast(f.device.type, enabled=False):  # G - A must not be rounded to bf16
        return torch.bmm(f, f.transpose(1, 2))


def style_loss_forward(features, target, scale: float):
    """nst_fast::style_loss_forward -> (scale * sum(R^2), R) with the residual R = G - target."""
    residual = gram(features) - target
    return scale * residual.square().sum(), residual


def style_loss_backward(grad_loss, residual, features, scale: float):
    """nst_fast::style_loss_backward: the features' gradient, 4 scale grad_loss R F."""
    f = features.to(residual.dtype)
    with torch.autocast(f.device.type, enabled=False):
        return (4.0 * scale * grad_loss * torch.bmm(residual, f)).to(features.dtype)


def style_loss_relu_backward(grad_loss, residual, features, scale: float, grad_features=None):
    """nst_fast::style_loss_relu_backward: the backward of relu(x) = features with the
    style loss taken at features, where grad_features reaches them from the layers
    above (None: nothing does)."""
    grad = style_loss_backward(grad_loss, residual, features, scale)
    if grad_features is not None:
        grad = grad + grad_features
    return torch.ops.aten.threshold_backward(grad, features, 0)


def relu_max_pool2_(x: torch.Tensor) -> torch.Tensor:
    """nst_fast::relu_max_pool2_: the ReLU in place on x (B, C, H, W) -> the 2x2,
    stride-2 max pool of its output."""
    return F.max_pool2d(x.relu_(), 2, 2)


def relu_max_pool2_backward(grad_pooled, act, grad_act=None):
    """nst_fast::relu_max_pool2_backward: the gradient at the ReLU's input, where act is
    its output, grad_pooled reaches the pool's output and grad_act (None: nothing)
    reaches act from elsewhere. As autograd runs the two modules' backwards."""
    _, indices = F.max_pool2d(act, 2, 2, return_indices=True)
    grad = torch.ops.aten.max_pool2d_with_indices_backward(grad_pooled, act, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                           indices)
    if grad_act is not None:
        grad = grad + grad_act
    return torch.ops.aten.threshold_backward(grad, act, 0)


def conv3x3(x, weight, bias=None):
    """nst_fast::conv3x3_winograd's convolution by PyTorch's own: 3x3, stride 1, zero
    padding 1. (The op takes the weight's Winograd transform instead of the weight.)"""
    return F.conv2d(x, weight, bias, padding=1)
