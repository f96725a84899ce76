"""The ReLU fusions against the modules run separately: the style loss and the max
pool, each with the ReLU before it.

    python benchmarks/bench_relu_fusion.py [--device cpu|cuda] [--size 512] [--md out.md]

Per VGG-19 style layer, the backward of relu + style loss: "separate" is what
autograd runs for them apart (style_loss_backward, the add of the gradient from the
layers above, threshold_backward), "fused" the one op style_loss_relu_backward. Per
max pool, the forward and the backward of relu + pool: relu_, max_pool2d_with_indices,
max_pool2d_with_indices_backward and threshold_backward against relu_max_pool2_ and
relu_max_pool2_backward. Then the whole optimisation
step with both fusions on (GatysLoss.fuse_relu, pooling.FUSE) and off. Both in one
run, alternating; on a GPU the per-layer times are CUDA-graph replays (GPU time),
on the CPU medians of interleaved calls with freed memory kept (nst_fast/runtime/heap.py),
so that page faults do not decide, and the caches flushed before each call.
"""
import argparse
import os
import statistics
import time

import common
import torch
from common import STYLE_WEIGHT, cuda_graph_ms, inputs, per_step_ms, sync

from nst_fast import StyleTransfer
from nst_fast.ops import relu_pool as pooling, style_loss as ops  # noqa: F401  (ops registers the fakes)
from nst_fast.runtime import heap
from nst_fast.losses.gatys import GatysLoss

FLUSH_BYTES = 128 << 20  # more than the CPU's last-level cache
LAYERS = common.STYLE_LAYERS


def layer_inputs(c, h, w, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(1, c, h, w, generator=g).relu().to(device, dtype).contiguous(memory_format=torch.channels_last)
    up = torch.randn(1, c, h, w, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    t = torch.rand(1, c, h * w, generator=g).to(device)
    _, residual = torch.ops.nst_fast.style_loss_forward(f.flatten(2), t @ t.transpose(1, 2), 1e-9)
    return f.flatten(2), up.flatten(2), residual, torch.tensor(1.0, device=device)


def separate(f, up, residual, grad):
    dF = torch.ops.nst_fast.style_loss_backward(grad, residual, f, 1e-9)
    return torch.ops.aten.threshold_backward(dF + up, f, 0)


def fused(f, up, residual, grad):
    return torch.ops.nst_fast.style_loss_relu_backward(grad, residual, f, 1e-9, up)


POOLS = [("pool1", 64, 1), ("pool2", 128, 2), ("pool3", 256, 4), ("pool4", 512, 8)]


def pool_inputs(c, h, w, seed, dtype=torch.float32, device="cpu"):
    g, cl = torch.Generator().manual_seed(seed), torch.channels_last
    act = torch.randn(1, c, h, w, generator=g).relu().to(device, dtype).contiguous(memory_format=cl)
    grad = torch.randn(1, c, h // 2, w // 2, generator=g).to(device, dtype).contiguous(memory_format=cl)
    _, indices = torch.nn.functional.max_pool2d(act, 2, 2, return_indices=True)
    return act, grad, indices


def pool_separate(act, grad, indices):
    g = torch.ops.aten.max_pool2d_with_indices_backward(grad, act, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
    return torch.ops.aten.threshold_backward(g, act, 0)


def pool_fused(act, grad, indices):
    return torch.ops.nst_fast.relu_max_pool2_backward(grad, act, None)


def pool_pass_separate(x, grad, indices):
    """Forward and backward of relu + pool as autograd runs them apart (x: the ReLU's input)."""
    act = x.relu_()
    _, idx = torch.ops.aten.max_pool2d_with_indices(act, [2, 2], [2, 2])
    return pool_separate(act, grad, idx)


def pool_pass_fused(x, grad, indices):
    torch.ops.nst_fast.relu_max_pool2_(x)
    return pool_fused(x, grad, indices)


def cpu_ms(fns, args, rounds=60):
    """Median ms per call of each fn, the calls interleaved, each with the caches
    flushed first: in a step the activation was written long before its backward reads it."""
    times = [[] for _ in fns]
    flush = torch.zeros(FLUSH_BYTES // 4)
    for _ in range(rounds):
        for fn, ts in zip(fns, times):
            flush.add_(1.0)
            t = time.perf_counter()
            fn(*args)
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) * 1e3 for ts in times]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=None, help="long side in pixels (cpu 256, cuda 512)")
    p.add_argument("--precision", default=None, help="fp32 | bf16 (cpu) | tf32 (cuda) (cuda: bf16)")
    p.add_argument("--steps", default=None, help="n1,n2 step counts for the difference (cpu 3,8; cuda 20,70)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--md", default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    size = args.size or (512 if cuda else 256)
    precision = args.precision or ("bf16" if cuda else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n1, n2 = (int(s) for s in (args.steps or ("20,70" if cuda else "3,8")).split(","))
    content, style = inputs(size)
    h, w = content.shape[-2:]
    report = common.Report(args.md)
    report.add(f"{common.device_name(device)}, torch {torch.__version__}, {w}x{h}, {precision}", "")
    report.table("layer", "C x H x W", "separate ms", "fused ms", "speed-up")
    with heap.keep_freed_memory(not cuda):
        for i, (layer, c, down) in enumerate(LAYERS):
            args_ = layer_inputs(c, h // down, w // down, dtype, device, seed=i)
            if cuda:
                ms = [cuda_graph_ms(fn, [args_])[0] for fn in (separate, fused)]
            else:
                ms = cpu_ms((separate, fused), args_)
            report.row(layer, f"{c} x {h // down} x {w // down}", f"{ms[0]:.3f}", f"{ms[1]:.3f}",
                       f"{ms[0] / ms[1]:.2f}x")

        if cuda or precision == "fp32":
            report.add("")
            report.table("pool (after its ReLU), forward + backward", "C x H x W in", "separate ms", "fused ms",
                         "speed-up")
            for i, (pool, c, down) in enumerate(POOLS):
                args_ = pool_inputs(c, h // down, w // down, 10 + i, dtype, device)
                if cuda:
                    ms = [cuda_graph_ms(fn, [args_])[0] for fn in (pool_pass_separate, pool_pass_fused)]
                else:
                    ms = cpu_ms((pool_pass_separate, pool_pass_fused), args_)
                report.row(pool, f"{c} x {h // down} x {w // down}", f"{ms[0]:.3f}", f"{ms[1]:.3f}",
                           f"{ms[0] / ms[1]:.2f}x")

        transfer = StyleTransfer(weights=os.environ.get("NST_FAST_WEIGHTS", "random"), device=device)
        step_ms = {True: [], False: []}
        for _ in range(args.repeats):
            for on in (False, True):
                GatysLoss.fuse_relu = pooling.FUSE = on

                def run(n):
                    transfer.stylize_tensor(content, style, size=size, steps=n, precision=precision,
                                            style_weight=STYLE_WEIGHT, report_every=10**9)
                step_ms[on].append(per_step_ms(run, device, n1, n2, 1))
        GatysLoss.fuse_relu = pooling.FUSE = True
        sync(device)
    sep, fus = statistics.median(step_ms[False]), statistics.median(step_ms[True])
    report.add("")
    report.table("whole step", "separate ms", "fused ms", "speed-up")
    report.row(f"{w}x{h} {precision}", f"{sep:.2f}", f"{fus:.2f}", f"{sep / fus:.2f}x")
    report.add("", f"whole step per repeat, separate: {', '.join(f'{v:.2f}' for v in step_ms[False])}; "
               f"fused: {', '.join(f'{v:.2f}' for v in step_ms[True])}")
    report.finish(reprint=False)


if __name__ == "__main__":
    main()
