"""Winograd F(4x4, 3x3) convolutions for VGG-19 on the CPU (csrc/cpu/winograd_cpu.cpp).

The weights are fixed during style transfer, so each layer's weight transform,
and the one of its flipped, transposed weight for the input gradient, is made
once. Weight gradients are not computed: the image is the only thing optimised.
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from . import backend

# G of F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity.
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)


def available() -> bool:
    """True where the compiled kernel exists and NST_FAST_WINOGRAD is not 0."""
    if os.environ.get("NST_FAST_WINOGRAD", "1").strip() == "0":
        return False
    return backend.has_op_kernel("conv3x3_winograd", "cpu") and backend.get_backend() != "reference"


def uses_winograd(device, dtype) -> bool:
    """True where a 3x3 convolution of VGG-19 runs by Winograd: float32 on the CPU."""
    return torch.device(device).type == "cpu" and dtype == torch.float32 and available()


def transform_bytes(in_channels: int, out_channels: int, itemsize: int = 4) -> int:
    """Memory for one layer's two weight transforms (forward and input gradient)."""
    return 2 * 36 * in_channels * out_channels * itemsize


def weight_transform(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> U = G g G^T laid out (36, C, K), computed in float64."""
    g = _G.to(weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.double(), g)
    return u.reshape(36, weight.size(1), weight.size(0)).to(weight.dtype).contiguous()


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, u, u_input_grad, bias):
        ctx.save_for_backward(u_input_grad)
        return torch.ops.nst_fast.conv3x3_winograd(x, u, bias)

    @staticmethod
    def backward(ctx, grad):
        (u_input_grad,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.nst_fast.conv3x3_winograd(grad, u_input_grad, None)
        return grad_x, None, None, None


def conv3x3(x, u, u_input_grad, bias=None):
    """A 3x3, stride-1, padding-1 convolution by Winograd, differentiable in x."""
    return _Conv3x3.apply(x, u, u_input_grad, bias)


class WinogradConv2d(nn.Module):
    """A frozen 3x3/stride-1/padding-1 Conv2d that runs Winograd on float32 CPU input
    outside autocast, and the ordinary convolution everywhere else."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if (conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1
                or conv.padding_mode != "zeros"):
            raise ValueError("WinogradConv2d takes 3x3 convolutions with stride 1 and zero padding 1")
        self.weight, self.bias = conv.weight, conv.bias
        self._transforms = None

    def _weights(self):
        key = (self.weight.data_ptr(), self.weight.dtype, self.weight._version)
        if self._transforms is None or self._transforms[0] != key:
            w = self.weight.detach()
            flipped = w.flip(2, 3).transpose(0, 1)
            self._transforms = (key, weight_transform(w), weight_transform(flipped))
        return self._transforms[1:]

    def forward(self, x):
        use = (
            uses_winograd(x.device, x.dtype)
            and self.weight.dtype == torch.float32
            and not self.weight.requires_grad
            and not torch.is_autocast_enabled("cpu")
        )
        if not use:
            return F.conv2d(x, self.weight, self.bias, padding=1)
        u, u_input_grad = self._weights()
        bias = None if self.bias is None else self.bias.detach()
        return conv3x3(x, u, u_input_grad, bias)
