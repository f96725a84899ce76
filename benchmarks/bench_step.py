"""Whole optimisation step: nst_fast (fp32 / tf32 / bf16) vs a naive tutorial-style loop.

    python benchmarks/bench_step.py [--device cpu|cuda] [--sizes 256,512] [--md out.md]
    python -m pytest benchmarks/bench_step.py    (pytest-benchmark: 5-step CPU runs)

Per size, in one run: ms per step (one forward + backward + optimiser update) of
the naive loop (benchmarks/naive.py: torch.mm Gram, F.mse_loss, torch.optim.LBFGS,
fp32) and of nst_fast in each precision mode; the speed-up over naive; peak GPU
memory; and the compute floor (conv FLOPs of the forward and the input-gradient
backward over the matmul rate measured here in that precision). A step's time is
(T(n2 steps) - T(n1 steps)) / (n2 - n1), so set-up work cancels out.
With --quality, also the final loss after --quality-steps steps per precision
mode, each image re-scored in fp32 with direct convolutions, relative to the fp32
run; on the CPU also fp32 and bf16 runs with direct convolutions.

On the CPU, fp32 runs Winograd convolutions (a quarter of the multiplies), so it can
beat the floor, which counts the multiplies of direct convolutions.
"""
import argparse
import contextlib
import os
import sys
import time

import common
import naive
import torch
from common import STYLE_WEIGHT, inputs, per_step_ms, sync

from nst_fast import StyleTransfer
from nst_fast.nets import vgg
from nst_fast.ops import winograd
from nst_fast.optimize import memory
from nst_fast.optimize.options import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS


def conv_flops(height, width, layers):
    """Multiply-adds x 2 of every conv up to the deepest layer, forward only."""
    deepest = max(vgg.LAYER_INDEX[n] for n in layers)
    flops, h, w, c_in = 0, height, width, 3
    for i, name in enumerate(vgg.LAYER_NAMES[: deepest + 1]):
        if name.startswith("conv"):
            c_out = vgg.layer_channels(name)
            flops += 2 * h * w * c_out * c_in * 9
            c_in = c_out
        elif name.startswith("pool"):
            h, w = h // 2, w // 2
    return flops


def matmul_tflops(device, precision, n=4096):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        n = n if device.type == "cuda" else 1024
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(device)
        reps = 20 if device.type == "cuda" else 5
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@contextlib.contextmanager
def direct_convolutions(on: bool):
    """Turn the CPU's Winograd convolutions off for a block (NST_FAST_WINOGRAD=0)."""
    old = os.environ.get("NST_FAST_WINOGRAD")
    if on:
        os.environ["NST_FAST_WINOGRAD"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("NST_FAST_WINOGRAD", None)
        else:
            os.environ["NST_FAST_WINOGRAD"] = old


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default=None, help="long sides in pixels (cpu: 128,256,512; cuda: 512,1024)")
    p.add_argument("--modes", default=None, help="naive,fp32,tf32,bf16 (tf32 only on cuda)")
    p.add_argument("--steps", default=None, help="n1,n2 step counts for the difference (cpu 3,8; cuda 20,70)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quality", action="store_true", help="also compare final losses across precisions")
    p.add_argument("--quality-size", type=int, default=512)
    p.add_argument("--quality-steps", type=int, default=100)
    p.add_argument("--probe", type=int, default=None,
                   help="also run 3 bf16 steps at this size and report time and peak memory (GPU)")
    p.add_argument("--md", default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sizes = [int(s) for s in (args.sizes or ("512,1024" if cuda else "128,256,512")).split(",")]
    modes = (args.modes or ("naive,fp32,tf32,bf16" if cuda else "naive,fp32,bf16")).split(",")
    n1, n2 = (int(s) for s in (args.steps or ("20,70" if cuda else "3,8")).split(","))

    transfer = StyleTransfer(weights=os.environ.get("NST_FAST_WEIGHTS", "random"), device=device)
    layers = list(DEFAULT_CONTENT_LAYERS) + list(DEFAULT_STYLE_LAYERS)
    name = common.device_name(device)
    rates = {m: matmul_tflops(device, m) for m in modes if m != "naive"}
    rates["naive"] = rates.get("fp32") or matmul_tflops(device, "fp32")
    report = common.Report(args.md)
    report.add(f"{name}, torch {torch.__version__}, weights {transfer.weights}; "
               f"matmul TFLOP/s measured: " + ", ".join(f"{m} {r:.1f}" for m, r in rates.items()), "")
    report.table("size", "mode", "ms / step", "speed-up vs naive", "floor ms", "x floor", "peak MiB")
    for size in sizes:
        content, style = inputs(size)
        h, w = content.shape[-2:]
        floor_flops = 2 * conv_flops(h, w, layers)  # forward + input-gradient backward
        base, last = None, []  # the last run's RunResult
        for mode in modes:
            if mode == "naive":
                def run(n):
                    naive.run(transfer.state, content, style, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS,
                              1.0, STYLE_WEIGHT, n, device)
            else:
                def run(n, mode=mode):
                    last[:] = [transfer.run(content, style, size=size, steps=n, precision=mode,
                                            style_weight=STYLE_WEIGHT, report_every=10**9)]
            ms = per_step_ms(run, device, n1, n2, args.repeats)
            base = ms if mode == "naive" else base
            floor = floor_flops / (rates[mode] * 1e12) * 1e3
            peak = common.cuda_peak_mib(run, device)
            graph = ""
            if mode != "naive" and cuda:
                graph = " (graph)" if last[0].cuda_graph else " (eager)"
            speedup = f"{base / ms:.2f}x" if base and mode != "naive" else "1.00x" if mode == "naive" else "-"
            report.row(f"{w}x{h}", f"{mode}{graph}", f"{ms:.2f}", speedup, f"{floor:.2f}", f"{ms / floor:.1f}",
                       "-" if peak is None else f"{peak:.0f}")
    if cuda:
        budget = 80 * 10**9
        report.add("", "Largest square size whose estimated peak (nst_fast.optimize.memory) fits 80 GB:", "")
        report.table("mode", "largest size")
        for mode in [m for m in modes if m != "naive"]:
            largest = memory.largest_size(budget, 1.0, list(DEFAULT_CONTENT_LAYERS), list(DEFAULT_STYLE_LAYERS),
                                          precision=mode, device="cuda")
            report.row(mode, largest)
    if args.probe and cuda:
        content, style = inputs(args.probe)
        h, w = content.shape[-2:]

        def probe_run(n):
            transfer.stylize_tensor(content, style, size=args.probe, steps=n, precision="bf16",
                                    style_weight=STYLE_WEIGHT, report_every=10**9, memory_limit=budget)

        estimate = memory.estimate_bytes(h, w, list(DEFAULT_CONTENT_LAYERS), list(DEFAULT_STYLE_LAYERS),
                                         precision="bf16", device="cuda") / 2**20
        peak = common.cuda_peak_mib(probe_run, device)
        ms = per_step_ms(probe_run, device, 2, 5, 1)
        report.add("", f"Probe {w}x{h} bf16: {ms:.1f} ms/step, peak {peak:.0f} MiB measured, "
                   f"{estimate:.0f} MiB estimated")
    if args.quality:
        report.add("", f"Final loss after {args.quality_steps} steps at {args.quality_size} px, "
                   "each output re-scored in fp32 with direct convolutions:", "")
        report.table("mode", "final loss", "vs fp32")
        content, style = inputs(args.quality_size)
        runs = [(m, m, False) for m in modes if m != "naive"]
        if not cuda and "fp32" in modes and winograd.uses_winograd("cpu", torch.float32):
            runs.append(("fp32 direct convs", "fp32", True))
        if not cuda and "bf16" in modes and winograd.uses_winograd("cpu", torch.bfloat16):
            runs.append(("bf16 direct convs", "bf16", True))
        scores = {}
        for label, mode, direct in runs:
            with direct_convolutions(direct):
                out = transfer.stylize_tensor(content, style, size=args.quality_size, steps=args.quality_steps,
                                              precision=mode, style_weight=STYLE_WEIGHT, report_every=10**9)
            with direct_convolutions(True):
                transfer.stylize_tensor(content, style, size=args.quality_size, steps=1, init=out,
                                        style_weight=STYLE_WEIGHT,
                                        callback=lambda i: scores.__setitem__(label, float(i.losses["total"])))
            ref = scores.get("fp32", scores[label])
            report.row(label, f"{scores[label]:.5g}", f"{100 * (scores[label] / ref - 1):+.2f}%")
    report.finish()


if __name__ == "__main__":
    main()


if "pytest" in sys.modules:  # collected by pytest-benchmark
    import pytest

    BENCH_STEPS = 5

    @pytest.fixture(scope="module")
    def transfer():
        return StyleTransfer(weights=os.environ.get("NST_FAST_WEIGHTS", "random"), device="cpu")

    @pytest.mark.parametrize("mode", ["naive", "fp32", "bf16"])
    @pytest.mark.parametrize("size", [128, 256, 512])
    def test_step(benchmark, transfer, mode, size):
        """A 5-step run on the CPU, set-up included (both loops compute their targets
        once): compare within a group; bench_step.py as a script gives ms per step."""
        benchmark.group = f"{BENCH_STEPS}-step run, {size} px, cpu"
        content, style = inputs(size)
        if mode == "naive":
            def run():
                naive.run(transfer.state, content, style, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS,
                          1.0, STYLE_WEIGHT, BENCH_STEPS, torch.device("cpu"))
        else:
            def run():
                transfer.stylize_tensor(content, style, size=size, steps=BENCH_STEPS, precision=mode,
                                        style_weight=STYLE_WEIGHT, report_every=10**9)
        benchmark.pedantic(run, rounds=3, warmup_rounds=1)
