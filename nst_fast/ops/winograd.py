"""Winograd F(4x4, 3x3) convolutions for VGG-19 on the CPU (csrc/cpu/winograd_cpu.cpp):
float32, and bfloat16 products with float32 sums on CPUs with AVX512-BF16.

The weights are fixed during style transfer, so each layer's weight transform,
and the one of its flipped, transposed weight for the input gradient, is made
once. Weight gradients are not computed: the image is the only thing optimised.
Elsewhere the convolution is PyTorch's own (reference.conv3x3).

The autograd is an autograd.Function, not torch.library.register_autograd on
conv3x3_winograd: the input gradient is the same op on the flipped, transposed
weight's transform, which is no argument of the forward op, so a formula registered
on the op could not reach it.
"""
import os

import torch
from torch import nn

from . import backend, reference

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
    """True where the compiled kernel runs (backend.runs_extension) and NST_FAST_WINOGRAD is not 0."""
    if os.environ.get("NST_FAST_WINOGRAD", "1").strip() == "0":
        return False
    return backend.runs_extension("conv3x3_winograd", "cpu")


def bf16_kernel_available() -> bool:
    """True where the kernel also takes bfloat16: a CPU with AVX512-BF16."""
    return available() and backend.winograd_bf16_supported()


def bf16_available() -> bool:
    """True where bf16 mode runs its convolutions by Winograd: the kernel is there and
    NST_FAST_WINOGRAD_BF16=1 asks for it. Off by default: F(4x4, 3x3) with bf16 tiles
    is 1.3-1.7x faster per step, but its gradients through VGG-19 are ~25% off (mean,
    relative) and L-BFGS stalls on them (docs/decisions.md); Adam does not."""
    return os.environ.get("NST_FAST_WINOGRAD_BF16", "0").strip() == "1" and bf16_kernel_available()


def uses_winograd(device, dtype) -> bool:
    """True where a 3x3 convolution of VGG-19 runs by Winograd on the CPU: float32, and
    bfloat16 (nst_fast's bf16 mode) where the CPU has AVX512-BF16."""
    if torch.device(device).type != "cpu":
        return False
    return available() if dtype == torch.float32 else dtype == torch.bfloat16 and bf16_available()


def bf16_fits(in_channels: int, out_channels: int) -> bool:
    """Whether the bfloat16 kernel takes this layer, forward and input gradient: its
    products run 32 output channels at a time over pairs of input channels."""
    return in_channels % 32 == 0 and out_channels % 32 == 0


def transform_bytes(in_channels: int, out_channels: int, itemsize: int = 4) -> int:
    """Memory for one layer's two weight transforms (forward and input gradient)."""
    return 2 * 36 * in_channels * out_channels * itemsize


def weight_transform(weight: torch.Tensor, compute=torch.float64) -> torch.Tensor:
    """(K, C, 3, 3) -> U = G g G^T laid out (36, C, K), computed in float64 (or `compute`)."""
    g = _G.to(weight.device, compute)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.to(compute), g)
    return u.reshape(36, weight.size(1), weight.size(0)).to(weight.dtype).contiguous()


def weight_transform_bf16(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> U in bfloat16, packed (36, C / 2, K, 2): rows 2i and 2i + 1 of
    each point's C x K matrix interleaved, as the kernel's pairwise products want.
    Computed in float32, far finer than the bf16 it is rounded to (and half float64's
    transient memory)."""
    u = weight_transform(weight.to(torch.bfloat16), compute=torch.float32)
    return u.view(36, weight.size(1) // 2, 2, weight.size(0)).transpose(2, 3).contiguous()


if backend.extension_loaded():

    @torch.library.register_fake("nst_fast::conv3x3_winograd")
    def _conv3x3_winograd_fake(x, weight_transform, bias):
        n, _, h, w = x.shape
        out = x.new_empty((n, weight_transform.shape[2], h, w))  # K: dim 2 of both layouts
        return out.contiguous(memory_format=torch.channels_last)


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
            grad_x = torch.ops.nst_fast.conv3x3_winograd(grad.to(u_input_grad.dtype), u_input_grad, None)
        return grad_x, None, None, None


def conv3x3(x, u, u_input_grad, bias=None):
    """A 3x3, stride-1, padding-1 convolution by Winograd, differentiable in x."""
    return _Conv3x3.apply(x, u, u_input_grad, bias)


class WinogradConv2d(nn.Module):
    """A frozen 3x3/stride-1/padding-1 Conv2d that runs Winograd on the CPU: float32
    input outside autocast; bfloat16 (bf16 weights, or bf16 autocast) where the CPU
    has AVX512-BF16. The ordinary convolution everywhere else."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if (conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1
                or conv.padding_mode != "zeros"):
            raise ValueError("WinogradConv2d takes 3x3 convolutions with stride 1 and zero padding 1")
        self.weight, self.bias = conv.weight, conv.bias
        self._transforms = None
        self.enabled = True

    def set_enabled(self, enabled: bool) -> None:
        """Off: the ordinary convolution, and the weight transforms freed (a low_memory run)."""
        self.enabled = enabled
        if not enabled:
            self._transforms = None

    def _weights(self, bf16: bool):
        key = (self.weight.data_ptr(), self.weight.dtype, self.weight._version, bf16)
        if self._transforms is None or self._transforms[0] != key:
            w = self.weight.detach()
            flipped = w.flip(2, 3).transpose(0, 1)
            transform = weight_transform_bf16 if bf16 else weight_transform
            self._transforms = (key, transform(w), transform(flipped))
        return self._transforms[1:]

    def _bf16(self, x) -> bool:
        """bf16 mode on a CPU that runs it: bf16 weights, or bf16 autocast."""
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        wanted = autocast or (x.dtype == self.weight.dtype == torch.bfloat16)
        return (wanted and x.device.type == "cpu" and bf16_available()
                and bf16_fits(self.weight.size(1), self.weight.size(0)))

    def forward(self, x):
        if self.weight.requires_grad or not self.enabled:
            return reference.conv3x3(x, self.weight, self.bias)
        if self._bf16(x):
            u, u_input_grad = self._weights(bf16=True)
            bias = None if self.bias is None else self.bias.detach().to(torch.bfloat16)
            with torch.autocast("cpu", enabled=False):
                return conv3x3(x.to(torch.bfloat16), u, u_input_grad, bias)
        use = (
            uses_winograd(x.device, x.dtype)
            and x.dtype == self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
        )
        if not use:
            return reference.conv3x3(x, self.weight, self.bias)
        u, u_input_grad = self._weights(bf16=False)
        bias = None if self.bias is None else self.bias.detach()
        return conv3x3(x, u, u_input_grad, bias)
