"""How far the CPU's fp32 convolutions are from float64: oneDNN's direct ones and the
Winograd ones (nst_fast/ops/winograd.py), at VGG-19 layer shapes, for [0, 1) and signed inputs.

    python benchmarks/experiments/conv_accuracy.py

Errors are |fp32 - float64| over the largest |output|: the mean over the outputs and the worst one.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import common  # noqa: E402

from nst_fast.ops import winograd  # noqa: E402

SHAPES = [(64, 64, 256), (128, 256, 128), (256, 256, 64), (512, 512, 32)]  # C, K, H = W


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    torch.manual_seed(0)
    print("| conv (C -> K, H x W) | input | direct mean | Winograd mean | direct max | Winograd max |")
    print("|---|---|---|---|---|---|")
    for c, k, side in SHAPES:
        conv = torch.nn.Conv2d(c, k, 3, padding=1).requires_grad_(False)
        for kind in ("[0, 1)", "signed"):
            x = torch.rand(1, c, side, side) if kind == "[0, 1)" else torch.randn(1, c, side, side)
            x = x.contiguous(memory_format=torch.channels_last)
            ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
            scale = ref.abs().max()
            with torch.no_grad():
                direct, wino = conv(x).double() - ref, winograd.WinogradConv2d(conv)(x).double() - ref
            cells = [f"{(e.abs().mean() / scale).item():.1e}" for e in (direct, wino)]
            cells += [f"{(e.abs().max() / scale).item():.1e}" for e in (direct, wino)]
            print(f"| {c} -> {k}, {side} x {side} | {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
