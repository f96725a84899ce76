"""A ReLU and the 2x2, stride-2 max pool after it as one autograd node (VGG's pools).

Two ops (csrc/include/nst_fast/relu_pool.h). torch.ops.nst_fast.relu_max_pool2_ runs
the ReLU in place and the pool in one pass, where the two modules take two and the
pool also writes int64 indices. relu_max_pool2_backward does in one pass what autograd
runs a zero fill, the pool's scatter, an add and the ReLU's threshold_backward for.
The values and gradients are those of the two modules run separately, bit for bit
(reference.relu_max_pool2_ and relu_max_pool2_backward); where `fits` says no, the
network runs the two modules.

The autograd is an autograd.Function, not torch.library.register_autograd: that takes
functional ops only, and relu_max_pool2_ writes the ReLU into its input.
"""
import torch
from torch import nn

from . import backend

FUSE = True  # False: the ReLU and the pool run separately (A/B runs)

_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

if backend.extension_loaded():

    @torch.library.register_fake("nst_fast::relu_max_pool2_")
    def _relu_max_pool2_fake(x):
        n, c, h, w = x.shape
        channels_last = c > 1 and x.stride(1) == 1
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return x.new_empty((n, c, h // 2, w // 2)).contiguous(memory_format=fmt)

    @torch.library.register_fake("nst_fast::relu_max_pool2_backward")
    def _relu_max_pool2_backward_fake(grad_pooled, act, grad_act):
        return torch.empty_like(act)


class _ReluMaxPool2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        pooled = torch.ops.nst_fast.relu_max_pool2_(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)
        return x, pooled

    @staticmethod
    def backward(ctx, grad_act, grad_pooled):
        (act,) = ctx.saved_tensors
        if grad_pooled is None:
            return None if grad_act is None else torch.ops.aten.threshold_backward(grad_act, act, 0)
        return torch.ops.nst_fast.relu_max_pool2_backward(grad_pooled, act, grad_act)


def _is_vgg_pair(relu: nn.Module, pool: nn.Module) -> bool:
    """An in-place ReLU and a 2x2, stride-2 max pool without padding."""
    return (isinstance(relu, nn.ReLU) and relu.inplace and type(pool) is nn.MaxPool2d
            and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0))
            and pool.dilation in (1, (1, 1)) and not pool.ceil_mode and not pool.return_indices)


def _dense(x: torch.Tensor) -> bool:
    return x.dim() == 4 and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))


def fits(relu: nn.Module, pool: nn.Module, x: torch.Tensor) -> bool:
    """Whether relu_max_pool2 can stand for this in-place ReLU and pool on x, and gains:
    on CUDA, a dense float32, bfloat16 or float16 x; on the CPU, a float32
    channels-last x that needs a gradient, outside autocast (its loops take no other)."""
    if not (FUSE and _is_vgg_pair(relu, pool) and _dense(x)
            and backend.runs_extension("relu_max_pool2_backward", x.device)):
        return False
    if x.device.type == "cuda":
        return x.dtype in _CUDA_DTYPES
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.requires_grad
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu"))


def relu_max_pool2(x: torch.Tensor):
    """(relu(x), max_pool2d(relu(x), 2, 2)), the ReLU in place on x."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return x, torch.ops.nst_fast.relu_max_pool2_(x)
    return _ReluMaxPool2.apply(x)
