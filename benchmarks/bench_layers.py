"""Fused style loss vs the naive composite per VGG-19 style layer, forward + backward, on the CPU.

As a script:  python benchmarks/bench_layers.py [--sizes 256,512] [--md out.md]
              prints fused/naive times and their ratio, all measured in this one run.
Under pytest: pytest benchmarks/bench_layers.py   (pytest-benchmark, one group per layer)

naive = torch.bmm Gram + F.mse_loss(reduction="sum") + autograd (two GEMMs and an add
in the backward); fused = nst_fast.ops.style_loss (one GEMM each way).
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nst_fast import backend, ops  # noqa: E402

LAYERS = [("relu1_1", 64, 1), ("relu2_1", 128, 2), ("relu3_1", 256, 4), ("relu4_1", 512, 8), ("relu5_1", 512, 16)]


def make_inputs(c, size, down, channels_last=True):
    side = size // down
    x = torch.rand(1, c, side, side).relu_()
    if channels_last:  # what the stylize loop feeds the op
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.rand(1, c, side * side)
    return x.requires_grad_(True), torch.bmm(t, t.transpose(1, 2)), 1.0 / (4.0 * c * c * (side * side) ** 2)


def fused_step(f, a, s):
    loss = ops.style_loss(f, a, s)
    torch.autograd.grad(loss, f)


def naive_step(f, a, s):
    flat = f.flatten(2)
    loss = s * F.mse_loss(torch.bmm(flat, flat.transpose(1, 2)), a, reduction="sum")
    torch.autograd.grad(loss, f)


def median_ms(fn, args, min_time=0.3, warmup=2):
    for _ in range(warmup):
        fn(*args)
    samples, start = [], time.perf_counter()
    while time.perf_counter() - start < min_time or len(samples) < 5:
        t = time.perf_counter()
        fn(*args)
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--md", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if not backend.uses_extension("cpu"):
        print("note: the extension is not loaded; 'fused' is the reference path")
    lines = [f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}", "",
             "| layer | input px | C x M | fused ms | naive ms | naive / fused |", "|---|---|---|---|---|---|"]
    for size in [int(s) for s in args.sizes.split(",")]:
        for name, c, down in LAYERS:
            inputs = make_inputs(c, size, down)
            fused, naive = median_ms(fused_step, inputs), median_ms(naive_step, inputs)
            m = (size // down) ** 2
            lines.append(f"| {name} | {size} | {c} x {m} | {fused:.2f} | {naive:.2f} | {naive / fused:.2f}x |")
            print(lines[-1], flush=True)
    finish(lines, args.md)


def finish(lines, md=None):
    """Print the whole table again, and write it to the markdown file `md` if given."""
    if md:
        with open(md, "w") as f:
            f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


try:
    import pytest
except ImportError:
    pytest = None

if pytest is not None:
    CASES = [(n, c, d, s) for s in (256, 512) for n, c, d in LAYERS]

    @pytest.mark.parametrize("impl", ["fused", "naive"])
    @pytest.mark.parametrize("name,c,down,size", CASES, ids=[f"{n}-{s}px" for n, _, _, s in CASES])
    def test_layer(benchmark, impl, name, c, down, size):
        benchmark.group = f"{name} {size}px"
        inputs = make_inputs(c, size, down)
        benchmark(fused_step if impl == "fused" else naive_step, *inputs)


if __name__ == "__main__":
    main()
