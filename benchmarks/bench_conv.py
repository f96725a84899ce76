"""Winograd vs oneDNN per VGG-19 3x3 convolution, forward + input gradient, on the CPU.

As a script:  python benchmarks/bench_conv.py [--sizes 256,512] [--md out.md]
              prints both times and their ratio, all measured in this one run.
Under pytest: pytest benchmarks/bench_conv.py   (pytest-benchmark, one group per layer)

direct = F.conv2d on channels-last fp32 input (oneDNN), as nst_fast ran before and as
the naive loop runs; winograd = nst_fast's F(4x4, 3x3) kernel. The weights are frozen
in both, so the backward computes the input gradient only, as in style transfer.
On a CPU with AVX512-BF16, the same in bfloat16: oneDNN's bf16 convolution (bf16
mode's default) against the Winograd kernel's bf16 products (NST_FAST_WINOGRAD_BF16=1,
which this script sets).
"""
import argparse
import copy
import os
import sys

import common
import torch
import torch.nn.functional as F
from common import median_ms

from nst_fast.ops import winograd

# (layer, in channels, out channels, downsampling): every 3x3 conv up to conv5_1 but
# conv1_1, which stays direct; conv3_2..3_4 and conv4_2..4_4 repeat one shape each.
LAYERS = [("conv1_2", 64, 64, 1), ("conv2_1", 64, 128, 2), ("conv2_2", 128, 128, 2), ("conv3_1", 128, 256, 4),
          ("conv3_2", 256, 256, 4), ("conv4_1", 256, 512, 8), ("conv4_2", 512, 512, 8), ("conv5_1", 512, 512, 16)]
REPEATS = {"conv3_2": 3, "conv4_2": 3}


def make_inputs(c_in, c_out, size, down):
    side = size // down
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, c_in, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1).requires_grad_(False)
    grad = torch.rand(1, c_out, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(True), conv, grad


def direct_step(x, conv, grad):
    torch.autograd.grad(F.conv2d(x, conv.weight, conv.bias, padding=1), x, grad)


def winograd_step(x, wconv, grad):
    torch.autograd.grad(wconv(x), x, grad)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--md", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if not winograd.uses_winograd("cpu", torch.float32):
        sys.exit("the Winograd kernel is not available (extension not built, or NST_FAST_WINOGRAD=0)")
    bf16 = winograd.bf16_kernel_available()
    os.environ["NST_FAST_WINOGRAD_BF16"] = "1"
    headers = ["layer", "input px", "C -> K, H x W", "direct ms", "winograd ms", "direct / winograd"]
    if bf16:
        headers += ["direct bf16 ms", "winograd bf16 ms", "direct bf16 / winograd bf16", "winograd / winograd bf16"]
    report = common.Report(args.md)
    report.add(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}", "")
    report.table(*headers)
    for size in [int(s) for s in args.sizes.split(",")]:
        totals = [0.0] * 4
        for name, c_in, c_out, down in LAYERS:
            x, conv, grad = make_inputs(c_in, c_out, size, down)
            times = [median_ms(direct_step, x, conv, grad),
                     median_ms(winograd_step, x, winograd.WinogradConv2d(conv), grad)]
            if bf16:
                x16, grad16 = x.detach().bfloat16().requires_grad_(True), grad.bfloat16()
                conv16 = copy.deepcopy(conv).bfloat16()
                times += [median_ms(direct_step, x16, conv16, grad16),
                          median_ms(winograd_step, x16, winograd.WinogradConv2d(conv16), grad16)]
            n = REPEATS.get(name, 1)
            totals = [t + n * v for t, v in zip(totals, times)]
            label = f"{name} (x{n})" if n > 1 else name
            side = size // down
            report.row(label, size, f"{c_in} -> {c_out}, {side} x {side}", *_cells(times))
        report.row("the 12 convs after conv1_1", size, "", *_cells(totals[:len(times)], ".1f"))
    report.finish()


def _cells(times, fmt=".2f") -> list:
    """direct, winograd[, direct bf16, winograd bf16] ms -> the table's cells with their ratios."""
    cells = [f"{times[0]:{fmt}}", f"{times[1]:{fmt}}", f"{times[0] / times[1]:.2f}x"]
    if len(times) == 4:
        cells += [f"{times[2]:{fmt}}", f"{times[3]:{fmt}}", f"{times[2] / times[3]:.2f}x",
                  f"{times[1] / times[3]:.2f}x"]
    return cells


if "pytest" in sys.modules:  # collected by pytest-benchmark
    import pytest

    CASES = [(n, ci, co, d, s) for s in (256, 512) for n, ci, co, d in LAYERS]

    @pytest.mark.skipif(not winograd.uses_winograd("cpu", torch.float32), reason="Winograd kernel unavailable")
    @pytest.mark.parametrize("impl", ["winograd", "direct"])
    @pytest.mark.parametrize("name,c_in,c_out,down,size", CASES, ids=[f"{c[0]}-{c[4]}px" for c in CASES])
    def test_conv(benchmark, impl, name, c_in, c_out, down, size):
        benchmark.group = f"{name} {size}px"
        x, conv, grad = make_inputs(c_in, c_out, size, down)
        if impl == "winograd":
            benchmark(winograd_step, x, winograd.WinogradConv2d(conv), grad)
        else:
            benchmark(direct_step, x, conv, grad)


if __name__ == "__main__":
    main()
