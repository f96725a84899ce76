"""Whole step per network, with its default layers: VGG-19 (the paper's) against the
smaller VGGs and NIN, and the memory each is estimated to need.

    python benchmarks/experiments/bench_networks.py [--device cpu|cuda] [--sizes 512]
        [--networks vgg19,vgg16,vgg13,vgg11,alexnet,nin]

ms per step as in bench_style_losses.py (the difference of two run lengths after a
warm-up run), Gram loss, random weights, the run's default precision; memory:
nst_fast.optimize.memory's estimate of the run's peak.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import common  # noqa: E402

from nst_fast import StyleTransfer  # noqa: E402
from nst_fast.imaging import images  # noqa: E402
from nst_fast.optimize import memory  # noqa: E402
from nst_fast.optimize import options  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="512")
    p.add_argument("--networks", default="vgg19,vgg16,vgg13,vgg11,alexnet,nin")
    p.add_argument("--steps", default="3,13", help="n1,n2: the two run lengths whose difference is timed")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    n1, n2 = (int(s) for s in args.steps.split(","))
    content_image, style_image = (images.to_tensor(p) for p in common.example_paths())
    print("| network | size | ms / step | vs vgg19 | estimated peak MiB |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        base = None
        for network in args.networks.split(","):
            transfer = StyleTransfer(weights="random", device=device, network=network)

            def run(n, transfer=transfer, size=size):
                transfer.stylize_tensor(content_image, style_image, size=size, steps=n, style_loss="gram")

            ms = common.per_step_ms(run, device, n1, n2, repeats=1, warmup_steps=n1)
            base = base or ms
            content, style = options.default_layers(network)
            h, w = round(size * 255 / 384), size  # the example content's shape
            mib = memory.estimate_bytes(h, w, list(content), list(style), device=device.type, network=network) / 2**20
            print(f"| {network} | {w}x{h} | {ms:.1f} | {base / ms:.2f}x | {mib:.0f} |", flush=True)


if __name__ == "__main__":
    main()
