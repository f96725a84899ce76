"""Whole step per style loss: gram (the fused op) vs w2 vs mrf, each with its default layers.

    python benchmarks/bench_style_losses.py [--device cpu|cuda] [--sizes 256,512] [--md out.md]

Per size, in one run: ms per step (forward, losses, backward, L-BFGS update) of
each style loss, and its ratio to the Gram loss's step. A step's time is
(T(n2 steps) - T(n1 steps)) / (n2 - n1), so set-up work (the style targets, the
MRF's style patches) cancels out. Random VGG-19 weights: the time does not depend
on their values.
"""
import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from nst_fast import StyleTransfer, images  # noqa: E402

EXAMPLES = os.path.join(HERE, "..", "nst_fast", "examples")
LOSSES = ("gram", "w2", "mrf")


def per_step_ms(transfer, size, style_loss, n1, n2, device, precision):
    content = images.to_tensor(os.path.join(EXAMPLES, "content.png"))
    style = images.to_tensor(os.path.join(EXAMPLES, "style.png"))
    times = {}
    for n in (n1, n1, n2):  # the first run warms up (network, weight transforms, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        transfer.stylize_tensor(content, style, size=size, steps=n, style_loss=style_loss, precision=precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times[n] = time.perf_counter() - t
    return (times[n2] - times[n1]) / (n2 - n1) * 1e3, transfer.last_run.get("cuda_graph")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--steps", default="3,13", help="n1,n2: the two run lengths whose difference is timed")
    p.add_argument("--precision", default=None, help="fp32 | tf32 | bf16 (default: the device's default)")
    p.add_argument("--md", default=None, help="also write the table as Markdown here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    n1, n2 = (int(s) for s in args.steps.split(","))
    transfer = StyleTransfer(weights="random", device=device)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        ms = {}
        for style_loss in LOSSES:
            ms[style_loss], graphed = per_step_ms(transfer, size, style_loss, n1, n2, device, args.precision)
            print(f"{size} px {style_loss}: {ms[style_loss]:.1f} ms/step"
                  + ("" if device.type == "cpu" else f" (cuda graph: {graphed})"), flush=True)
        rows.append((size, ms))
    lines = ["| size | gram ms | w2 ms | mrf ms | w2 / gram | mrf / gram |", "|---|---|---|---|---|---|"]
    for size, ms in rows:
        lines.append(f"| {size} px | {ms['gram']:.1f} | {ms['w2']:.1f} | {ms['mrf']:.1f} | "
                     f"{ms['w2'] / ms['gram']:.2f}x | {ms['mrf'] / ms['gram']:.2f}x |")
    table = "\n".join(lines)
    print(f"\ndevice {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, precision {transfer.last_options.precision}\n{table}")
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"Per style loss, ms per step, precision {transfer.last_options.precision}:\n\n{table}\n")


if __name__ == "__main__":
    main()
