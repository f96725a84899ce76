"""The fused style-loss ops (csrc/include/nst_fast/style_loss.h) as differentiable
Python functions: gram, style_loss_forward, style_loss_backward and
style_loss_relu_backward, their fakes and their autograd.

`style_loss`, `relu_style_loss` and `gram` call torch.ops.nst_fast.* where
backend.runs_extension says so, and reference.py's functions elsewhere.
style_loss_forward's autograd is registered on the op with torch.library; the
ReLU's fusion stays an autograd.Function (_ReluStyleLoss), as it is no single op:
a ReLU in place (its output the input itself, marked dirty), then style_loss_forward,
with a backward that runs the reference where the op does not run.
"""
import torch

from . import backend, reference


def _flatten(features: torch.Tensor) -> torch.Tensor:
    # (B, C, H, W) -> (B, C, H*W); a view for both contiguous and channels-last input.
    if features.dim() == 4:
        return features.flatten(2)
    if features.dim() == 3:
        return features
    raise ValueError(f"features must be (B, C, M) or (B, C, H, W), got shape {tuple(features.shape)}")


def _batched_target(target: torch.Tensor, batch: int) -> torch.Tensor:
    if target.dim() == 2:
        target = target.unsqueeze(0)
    if target.size(0) == 1 and batch != 1:
        target = target.expand(batch, -1, -1)
    return target


if backend.extension_loaded():

    @torch.library.register_fake("nst_fast::gram")
    def _gram_fake(features):
        b, c, _ = features.shape
        return features.new_empty((b, c, c), dtype=reference.accum_dtype(features.dtype))

    @torch.library.register_fake("nst_fast::style_loss_forward")
    def _style_loss_forward_fake(features, target, scale):
        b, c, _ = features.shape
        dtype = reference.accum_dtype(features.dtype)
        return features.new_empty((), dtype=dtype), features.new_empty((b, c, c), dtype=dtype)

    @torch.library.register_fake("nst_fast::style_loss_backward")
    def _style_loss_backward_fake(grad_loss, residual, features, scale):
        return torch.empty_like(features)

    @torch.library.register_fake("nst_fast::style_loss_relu_backward")
    def _style_loss_relu_backward_fake(grad_loss, residual, features, scale, grad_features):
        return torch.empty_like(features)

    def _setup_context(ctx, inputs, output):
        features, _target, scale = inputs
        ctx.save_for_backward(features, output[1])
        ctx.scale = scale
        # The residual output never has a gradient: do not fill one with zeros each step.
        ctx.set_materialize_grads(False)

    def _backward(ctx, grad_loss, _grad_residual):
        features, residual = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0] and grad_loss is not None:
            grad = torch.ops.nst_fast.style_loss_backward(grad_loss, residual, features, ctx.scale)
        return grad, None, None

    torch.library.register_autograd(
        "nst_fast::style_loss_forward", _backward, setup_context=_setup_context
    )


def _style_loss_forward(f, target, scale):
    if backend.runs_extension("style_loss_forward", f.device):
        return torch.ops.nst_fast.style_loss_forward(f, target, scale)
    return reference.style_loss_forward(f, target, scale)


class _ReluStyleLoss(torch.autograd.Function):
    """relu_(x) and the style loss of its output as one autograd node: its backward adds
    the style loss's gradient to the gradient from the layers above and applies the
    ReLU's mask in one op (style_loss_relu_backward), where autograd would run the
    style backward, an add and the ReLU's backward."""

    @staticmethod
    def forward(ctx, x, target, scale):
        act = x.relu_()
        ctx.mark_dirty(x)
        f = _flatten(act)
        loss, residual = _style_loss_forward(f, _batched_target(target, f.size(0)), scale)
        ctx.save_for_backward(act, residual)
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        return act, loss

    @staticmethod
    def backward(ctx, grad_act, grad_loss):
        act, residual = ctx.saved_tensors
        if grad_loss is None:
            grad = None if grad_act is None else torch.ops.aten.threshold_backward(grad_act, act, 0)
            return grad, None, None
        f = _flatten(act)
        g = None if grad_act is None else _flatten(grad_act)
        if backend.runs_extension("style_loss_relu_backward", f.device):
            grad = torch.ops.nst_fast.style_loss_relu_backward(grad_loss, residual, f, ctx.scale, g)
        else:
            grad = reference.style_loss_relu_backward(grad_loss, residual, f, ctx.scale, g)
        return grad.view(act.shape), None, None


def relu_style_loss(x: torch.Tensor, target: torch.Tensor, scale: float):
    """(relu(x), style_loss(relu(x), target, scale)), the ReLU in place on x (B, C, H, W).
    The same values and gradients as the two separately, with a leaner backward."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    return _ReluStyleLoss.apply(x, target, float(scale))


def gram(features: torch.Tensor) -> torch.Tensor:
    """G = F F^T per batch item, (B, C, C) in float32 (float64 for float64 input)."""
    f = _flatten(features)
    if backend.runs_extension("gram", f.device):
        return torch.ops.nst_fast.gram(f)
    return reference.gram(f)


def style_loss(features: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * sum((gram(features) - target)^2), differentiable in `features`.

    `target` is a Gram matrix (symmetric), (C, C), (1, C, C) or (B, C, C), in the
    accumulation dtype (float32; float64 for float64 features). The
    residual stays in float32 even for bfloat16 features or under autocast.
    """
    f = _flatten(features)
    loss, _residual = _style_loss_forward(f, _batched_target(target, f.size(0)), float(scale))
    return loss
