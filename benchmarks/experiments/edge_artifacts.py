"""How much a run paints the image's border differently from its inside, per padding
of the first convolution: the measurement behind `--padding`.

    python benchmarks/experiments/edge_artifacts.py [--weights PATH] [--size 256] [--steps 100] [--init noise]

For each padding it stylizes the example images and prints, for the band of BAND
pixels along the border against the inside: the mean brightness difference and the
ratio of high-frequency energy (mean |Laplacian|), each next to the content image's
own, which no artifact made. Real weights are needed for a meaningful answer; by
default the partial Caffe VGG-19 in ../shared/weights (style relu1_1..relu3_1,
content relu3_2).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import common  # noqa: E402

from nst_fast import StyleTransfer  # noqa: E402
from nst_fast.imaging import images  # noqa: E402

SHARED = common.SHARED_WEIGHTS
BAND = 8


def border_stats(image: torch.Tensor):
    """(inside mean - band mean brightness, band / inside mean |Laplacian|) of (1, 3, H, W)."""
    grey = image.mean(1, keepdim=True)
    kernel = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    lap = F.conv2d(grey, kernel).abs()[0, 0]  # (H-2, W-2), no padding of its own
    band = torch.ones_like(grey[0, 0], dtype=torch.bool)
    band[BAND:-BAND, BAND:-BAND] = False
    lap_band = band[1:-1, 1:-1]
    g = grey[0, 0]
    return float(g[~band].mean() - g[band].mean()), float(lap[lap_band].mean() / lap[~lap_band].mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=SHARED)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--init", default="content")
    args = p.parse_args(argv)
    partial = os.path.abspath(args.weights) == os.path.abspath(SHARED)
    layers = dict(content_layers="relu3_2", style_layers="relu1_1,relu2_1,relu3_1") if partial else {}
    content, style = (images.to_tensor(p) for p in common.example_paths())
    shrunk = images.resize_long_side(content, args.size)
    dark, busy = border_stats(shrunk)
    print(f"{args.size} px, {args.steps} L-BFGS steps, init {args.init}, band {BAND} px, "
          f"weights {os.path.basename(args.weights)}")
    print("| padding | inside - band brightness | band / inside high-frequency energy |")
    print("|---|---|---|")
    print(f"| (content image) | {dark:+.4f} | {busy:.3f} |")
    for padding in ("zeros", "replicate", "reflect"):
        transfer = StyleTransfer(weights=args.weights, device="cpu", padding=padding)
        out = transfer.stylize_tensor(content, style, size=args.size, steps=args.steps, init=args.init,
                                      **layers)
        dark, busy = border_stats(out)
        print(f"| {padding} | {dark:+.4f} | {busy:.3f} |")


if __name__ == "__main__":
    main()
