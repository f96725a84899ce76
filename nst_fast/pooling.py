"""A ReLU and the 2x2, stride-2 max pool after it as one autograd node (VGG's pools).

Its backward is one op on the CPU, torch.ops.nst_fast.relu_max_pool2_backward, where
autograd runs a zero fill, the pool's scatter, an add and the ReLU's threshold_backward.
The values and gradients are those of the two modules run separately.
"""
import torch
from torch import nn

from . import backend

FUSE = True  # False: the ReLU and the pool run separately (A/B runs)

if backend.extension_loaded():

    @torch.library.register_fake("nst_fast::relu_max_pool2_backward")
    def _relu_max_pool2_backward_fake(grad_pooled, act, grad_act):
        return torch.empty_like(act)


class _ReluMaxPool2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        act = x.relu_()
        ctx.mark_dirty(x)
        pooled = nn.functional.max_pool2d(act, 2, 2)
        ctx.save_for_backward(act)
        ctx.set_materialize_grads(False)
        return act, pooled

    @staticmethod
    def backward(ctx, grad_act, grad_pooled):
        (act,) = ctx.saved_tensors
        if grad_pooled is None:
            return None if grad_act is None else torch.ops.aten.threshold_backward(grad_act, act, 0)
        return torch.ops.nst_fast.relu_max_pool2_backward(grad_pooled, act, grad_act)


def fits(relu: nn.Module, pool: nn.Module, x: torch.Tensor) -> bool:
    """Whether relu_max_pool2 can stand for this in-place ReLU and pool on x: a 2x2,
    stride-2 max pool without padding, float32 channels-last CPU input that needs a
    gradient, and the extension's kernel."""
    return (FUSE and isinstance(relu, nn.ReLU) and relu.inplace and type(pool) is nn.MaxPool2d
            and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0))
            and pool.dilation in (1, (1, 1)) and not pool.ceil_mode and not pool.return_indices
            and x.device.type == "cpu" and x.dtype == torch.float32 and x.requires_grad
            and x.is_contiguous(memory_format=torch.channels_last)
            and backend.uses_extension(x.device) and backend.has_op_kernel("relu_max_pool2_backward", "cpu")
            and not torch.is_autocast_enabled("cpu"))


def relu_max_pool2(x: torch.Tensor):
    """(relu(x), max_pool2d(relu(x), 2, 2)), the ReLU in place on x."""
    return _ReluMaxPool2.apply(x)
