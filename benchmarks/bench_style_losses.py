"""Whole step per style loss: gram (the fused op) vs w2 vs mrf, each with its default layers.

    python benchmarks/bench_style_losses.py [--device cpu|cuda] [--sizes 256,512] [--md out.md]

Per size, in one run: ms per step (forward, losses, backward, L-BFGS update) of
each style loss, and its ratio to the Gram loss's step. A step's time is
(T(n2 steps) - T(n1 steps)) / (n2 - n1), so set-up work (the style targets, the
MRF's style patches) cancels out. Random VGG-19 weights: the time does not depend
on their values.
"""
import argparse

import common
import torch

from nst_fast import StyleTransfer
from nst_fast.imaging import images

LOSSES = ("gram", "w2", "mrf")


def step_ms(transfer, size, n1, n2, device, **options):
    """ms per step of transfer.run on the example images (full size, resized by
    the run), after a warm-up run of n1 steps (network, weight transforms, allocator);
    -> (ms, the last run's RunResult: whether the steps ran as CUDA-graph replays, in
    what precision)."""
    content, style = (images.to_tensor(p) for p in common.example_paths())
    last = []

    def run(n):
        last[:] = [transfer.run(content, style, size=size, steps=n, **options)]

    ms = common.per_step_ms(run, device, n1, n2, repeats=1, warmup_steps=n1)
    return ms, last[0]


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
            ms[style_loss], last = step_ms(transfer, size, n1, n2, device, style_loss=style_loss,
                                           precision=args.precision)
            print(f"{size} px {style_loss}: {ms[style_loss]:.1f} ms/step"
                  + ("" if device.type == "cpu" else f" (cuda graph: {last.cuda_graph})"), flush=True)
        rows.append((size, ms))
    report = common.Report(echo=False)
    report.table("size", "gram ms", "w2 ms", "mrf ms", "w2 / gram", "mrf / gram")
    for size, ms in rows:
        report.row(f"{size} px", f"{ms['gram']:.1f}", f"{ms['w2']:.1f}", f"{ms['mrf']:.1f}",
                   f"{ms['w2'] / ms['gram']:.2f}x", f"{ms['mrf'] / ms['gram']:.2f}x")
    table = report.finish(reprint=False)
    print(f"\ndevice {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, precision {last.options.precision}\n{table}")
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"Per style loss, ms per step, precision {last.options.precision}:\n\n{table}\n")


if __name__ == "__main__":
    main()
