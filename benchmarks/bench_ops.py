"""The fused style-loss op against the naive composite, per VGG-19 style layer, forward + backward.

    python benchmarks/bench_ops.py --device cpu  [--sizes 256,512] [--md out.md]
    python benchmarks/bench_ops.py --device cuda [--sizes 512,1024] [--md out.md]
                                   [--sweep-splitk] [--ab-async] [--ab-resident]
    python -m pytest benchmarks/bench_ops.py    (pytest-benchmark, one group per layer;
                                                 the CUDA cases skip without the CUDA kernels)

naive = torch.bmm Gram + F.mse_loss(reduction="sum") + autograd (two GEMMs and an add
in the backward); fused = nst_fast.ops.style_loss.style_loss (one GEMM each way). Both are timed
in the same run and the table gives their ratio.

CPU: channels-last float32 features as the stylize loop feeds them; median wall-clock
ms after warm-up.

CUDA: (1, C, M) features; medians of CUDA-event-timed replays of a CUDA graph holding
several calls (GPU time; eager calls of the small layers are bound by Python and
dispatcher overhead, which the "fused eager" column shows), after warm-up; inputs
rotate over enough copies to exceed L2, so small layers are not timed out of cache.
Also the forward and the backward alone, naive with TF32 matmuls, the fused op with
TF32 allowed (one TF32 product per pair) and in bfloat16. "floor" is the bytes-moved
floor of forward + backward for float32 features (F read once forward, F read + dF
written once backward) at the device-to-device copy bandwidth measured in the same run.
Kernel variants for A/B runs (environment switches the options set in turn):
--sweep-splitk times the forward at NST_FAST_SPLITK_PER_SM = 1..16, --ab-async
NST_FAST_CUDA_ASYNC=0 (register-staged loads) against the cp.async pipeline,
--ab-resident NST_FAST_CUDA_RESIDENT=0 (one block per output tile) against the
D-resident backward, and =256 (relu3_1's 256-column panel) against the default.
--md defaults to $NST_FAST_BENCH_MD.
"""
import argparse
import math
import os
import sys

import common
import torch
import torch.nn.functional as F

from nst_fast.ops import backend, style_loss as ops

LAYERS = common.STYLE_LAYERS
L2_ROTATE_BYTES = 160 << 20


def fused_step(f, a, s):
    loss = ops.style_loss(f, a, s)
    return torch.autograd.grad(loss, f)[0]


def naive_step(f, a, s):
    flat = f.flatten(2)
    loss = s * F.mse_loss(torch.bmm(flat, flat.transpose(1, 2)), a, reduction="sum")
    return torch.autograd.grad(loss, f)[0]


def scale(c, m):
    return 1.0 / (4.0 * c * c * m * m)


# ---------------------------------------------------------------- CPU
def cpu_inputs(c, size, down, channels_last=True):
    side = size // down
    x = torch.rand(1, c, side, side).relu_()
    if channels_last:  # what the stylize loop feeds the op
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.rand(1, c, side * side)
    return x.requires_grad_(True), torch.bmm(t, t.transpose(1, 2)), scale(c, side * side)


def run_cpu(args):
    if not backend.uses_extension("cpu"):
        print("note: the extension is not loaded; 'fused' is the reference path")
    report = common.Report(args.md)
    report.add(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}", "")
    report.table("layer", "input px", "C x M", "fused ms", "naive ms", "naive / fused")
    for size in [int(s) for s in args.sizes.split(",")]:
        for name, c, down in LAYERS:
            inputs = cpu_inputs(c, size, down)
            fused, naive = common.median_ms(fused_step, *inputs), common.median_ms(naive_step, *inputs)
            m = (size // down) ** 2
            report.row(name, size, f"{c} x {m}", f"{fused:.2f}", f"{naive:.2f}", f"{naive / fused:.2f}x")
    report.finish()
    return 0


# ---------------------------------------------------------------- CUDA
def cuda_kernel_present():
    try:
        return torch.cuda.is_available() and backend._has_kernel("cuda")
    except Exception:
        return False


def layer_shape(channels, down, size):
    return channels, (size // down) ** 2


def cuda_inputs(c, m, dtype=torch.float32, batch=1, sets=None):
    """-> ([(f, a)] enough copies to exceed L2, scale)."""
    nbytes = batch * c * m * torch.tensor([], dtype=dtype).element_size()
    if sets is None:
        sets = max(1, min(64, math.ceil(L2_ROTATE_BYTES / nbytes)))
    out = []
    for _ in range(sets):
        f = (torch.rand(batch, c, m, device="cuda") * 1.5).to(dtype).requires_grad_(True)
        t = torch.rand(batch, c, m, device="cuda")
        out.append((f, torch.bmm(t, t.transpose(1, 2))))
    return out, scale(c, m)


def copy_bandwidth_gbs(nbytes=1 << 30):
    src = torch.empty(nbytes // 4, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = common.cuda_event_ms(lambda a, b: b.copy_(a), [(src, dst)], warmup=3, samples=15, min_sample_ms=0.0)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def set_tf32(enabled):
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def bench_layer(name, c, down, size, bw_gbs, batch=1):
    c, m = layer_shape(c, down, size)
    inputs, s = cuda_inputs(c, m, batch=batch)
    row = {"layer": name, "size": size, "C": c, "M": m, "graph": True}

    def timed(key, fn, data):
        row[key], ok = common.cuda_graph_ms(fn, data)
        row["graph"] &= ok

    set_tf32(False)
    timed("fused", lambda f, a: fused_step(f, a, s), inputs)
    row["fused_eager"] = common.cuda_event_ms(lambda f, a: fused_step(f, a, s), inputs)
    # the forward alone and the backward alone
    timed("fwd", lambda f, a: torch.ops.nst_fast.style_loss_forward(f.detach(), a, s), inputs)
    res = [torch.ops.nst_fast.style_loss_forward(f.detach(), a, s)[1] for f, a in inputs]
    gl = torch.ones((), device="cuda")
    bwd_inputs = [(f.detach(), r) for (f, _), r in zip(inputs, res)]
    timed("bwd", lambda f, r: torch.ops.nst_fast.style_loss_backward(gl, r, f, s), bwd_inputs)
    timed("naive", lambda f, a: naive_step(f, a, s), inputs)
    set_tf32(True)
    timed("naive_tf32", lambda f, a: naive_step(f, a, s), inputs)
    timed("fused_tf32", lambda f, a: fused_step(f, a, s), inputs)  # one TF32 product per pair
    set_tf32(False)
    del inputs, res, bwd_inputs
    binputs, _ = cuda_inputs(c, m, torch.bfloat16, batch=batch)
    timed("fused_bf16", lambda f, a: fused_step(f, a, s), binputs)
    del binputs
    fbytes = batch * c * m * 4
    row["floor"] = 3 * fbytes / (bw_gbs * 1e9) * 1e3
    return row


class _Env:
    """Sets environment variable `name` inside the block, restoring its old value after."""

    def __init__(self, name):
        self.name, self.old = name, os.environ.get(name)

    def set(self, value):
        os.environ[self.name] = str(value)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.old


def sweep_splitk(size=512, values=(1, 2, 4, 8, 16)):
    rows = []
    with _Env("NST_FAST_SPLITK_PER_SM") as env:
        for name, c, down in LAYERS:
            c, m = layer_shape(c, down, size)
            inputs, s = cuda_inputs(c, m)
            r = {"layer": name, "size": size}
            for v in values:
                env.set(v)
                r[v] = common.cuda_graph_ms(lambda f, a: torch.ops.nst_fast.style_loss_forward(f.detach(), a, s),
                                            inputs)[0]
            rows.append(r)
            del inputs
    lines = ["", f"Split-K sweep (forward only, ms, {size} px), blocks per SM: "
             + ", ".join(map(str, values)), "",
             "| layer | " + " | ".join(f"{v}/SM" for v in values) + " |",
             "|---|" + "---|" * len(values)]
    for r in rows:
        lines.append(f"| {r['layer']} | " + " | ".join(f"{r[v]:.4f}" for v in values) + " |")
    return "\n".join(lines)


def ab_switch(name, title, layers=LAYERS, sizes=(512, 1024), a="1", b="0"):
    """fwd+bwd with name=a (the default: a kernel feature on) and name=b, float32 and
    bfloat16; speed-up = time(b) / time(a)."""
    lines = ["", f"{title} A/B (fused fwd+bwd, ms, CUDA-graph replays)", "",
             f"| layer | px | dtype | {name}={a} | {name}={b} | speed-up |",
             "|---|---|---|---|---|---|"]
    with _Env(name) as env:
        for size in sizes:
            for layer, c, down in layers:
                for dtype in (torch.float32, torch.bfloat16):
                    c_, m = layer_shape(c, down, size)
                    inputs, s = cuda_inputs(c_, m, dtype)
                    t = {}
                    for flag in (a, b):
                        env.set(flag)
                        t[flag] = common.cuda_graph_ms(lambda f, a: fused_step(f, a, s), inputs)[0]
                    kind = str(dtype).replace("torch.", "")
                    lines.append(f"| {layer} | {size} | {kind} | {t[a]:.4f} | {t[b]:.4f} | {t[b] / t[a]:.2f} |")
                    del inputs
    return "\n".join(lines)


def format_cuda_table(rows, bw_gbs):
    dev = torch.cuda.get_device_name()
    lines = [f"Device: {dev}; torch {torch.__version__}; copy bandwidth {bw_gbs:.0f} GB/s "
             "(read + write, 1 GiB device-to-device copy)", "",
             "fwd+bwd per style layer, float32 features, batch 1, median ms per call: CUDA-graph "
             "replays (GPU time) unless marked *; 'eager' = fused fwd+bwd called from Python", "",
             "| layer | px | C | M | fused | fwd | bwd | naive fp32 | naive tf32 | x fp32 | x tf32 "
             "| fused tf32 | tf32 x tf32 | fused bf16 | fused eager | floor | fused/floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r["graph"] else "*"
        lines.append(
            f"| {r['layer']}{mark} | {r['size']} | {r['C']} | {r['M']} | {r['fused']:.4f} | {r['fwd']:.4f} "
            f"| {r['bwd']:.4f} | {r['naive']:.4f} | {r['naive_tf32']:.4f} "
            f"| {r['naive'] / r['fused']:.2f} | {r['naive_tf32'] / r['fused']:.2f} "
            f"| {r['fused_tf32']:.4f} | {r['naive_tf32'] / r['fused_tf32']:.2f} "
            f"| {r['fused_bf16']:.4f} | {r['fused_eager']:.4f} | {r['floor']:.4f} "
            f"| {r['fused'] / r['floor']:.2f} |")
    lines.append("")
    for size in sorted({r["size"] for r in rows}):
        sel = [r for r in rows if r["size"] == size]
        keys = ("fused", "naive", "naive_tf32", "fused_tf32", "fused_bf16", "fused_eager", "floor")
        tot = {k: sum(r[k] for r in sel) for k in keys}
        lines.append(
            f"All five layers at {size} px: fused {tot['fused']:.4f} ms, naive fp32 {tot['naive']:.4f} ms "
            f"(x{tot['naive'] / tot['fused']:.2f}), naive tf32 {tot['naive_tf32']:.4f} ms "
            f"(x{tot['naive_tf32'] / tot['fused']:.2f}), fused tf32 {tot['fused_tf32']:.4f} ms "
            f"(naive tf32 x{tot['naive_tf32'] / tot['fused_tf32']:.2f}), fused bf16 {tot['fused_bf16']:.4f} ms, "
            f"fused eager {tot['fused_eager']:.4f} ms, "
            f"floor {tot['floor']:.4f} ms (fused/floor {tot['fused'] / tot['floor']:.2f})")
    return "\n".join(lines)


def run_cuda(args):
    if not cuda_kernel_present():
        print("bench_ops: no CUDA GPU or no nst_fast CUDA kernel; nothing to do")
        return 0
    torch.manual_seed(0)
    bw = copy_bandwidth_gbs()
    rows = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        for name, c, down in LAYERS:
            rows.append(bench_layer(name, c, down, size, bw))
            r = rows[-1]
            print(f"  {name}@{size}: fused {r['fused']:.4f} ms, naive {r['naive']:.4f}, "
                  f"tf32 {r['naive_tf32']:.4f}, floor {r['floor']:.4f}", flush=True)
    report = common.Report(args.md, echo=False)
    report.add(format_cuda_table(rows, bw))
    if args.sweep_splitk:
        report.add(sweep_splitk())
    if args.ab_async:
        report.add(ab_switch("NST_FAST_CUDA_ASYNC", "cp.async pipeline"))
    if args.ab_resident:
        small = [layer for layer in LAYERS if layer[1] <= 128]
        report.add(ab_switch("NST_FAST_CUDA_RESIDENT", "D-resident backward", small))
        c256 = [layer for layer in LAYERS if 128 < layer[1] <= 256]
        report.add(ab_switch("NST_FAST_CUDA_RESIDENT", "256-column D panel (2 blocks per SM)", c256, a="256", b="1"))
    report.finish()
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default=None, help="input sizes in px (cpu: 256,512; cuda: 512,1024)")
    p.add_argument("--md", default=os.environ.get("NST_FAST_BENCH_MD"),
                   help="also write the table(s) to this markdown file")
    cuda = p.add_argument_group("CUDA kernel variants (--device cuda)")
    cuda.add_argument("--sweep-splitk", action="store_true", help="also time the forward at 1..16 split-K blocks per SM")
    cuda.add_argument("--ab-async", action="store_true", help="also time NST_FAST_CUDA_ASYNC=0")
    cuda.add_argument("--ab-resident", action="store_true",
                      help="also time NST_FAST_CUDA_RESIDENT=0 (the layers with C <= 128) and =256 (relu3_1's "
                           "256-column panel against the default)")
    args = p.parse_args(argv)
    if args.device == "cpu":
        if args.sweep_splitk or args.ab_async or args.ab_resident:
            p.error("--sweep-splitk, --ab-async and --ab-resident switch CUDA kernels: use --device cuda")
        args.sizes = args.sizes or "256,512"
        return run_cpu(args)
    args.sizes = args.sizes or "512,1024"
    return run_cuda(args)


# ---------------------------------------------------------------- pytest-benchmark
if "pytest" in sys.modules:
    import pytest

    _CPU = [(n, c, d, s) for s in (256, 512) for n, c, d in LAYERS]

    @pytest.mark.parametrize("impl", ["fused", "naive"])
    @pytest.mark.parametrize("name,c,down,size", _CPU, ids=[f"{n}-{s}px" for n, _, _, s in _CPU])
    def test_layer_cpu(benchmark, impl, name, c, down, size):
        benchmark.group = f"cpu {name} {size}px"
        inputs = cpu_inputs(c, size, down)
        benchmark(fused_step if impl == "fused" else naive_step, *inputs)

    _CUDA = [(n, c, d, size) for size in (512, 1024) for n, c, d in LAYERS]
    # (step, features dtype, TF32 matmuls allowed) per implementation.
    _IMPLS = {
        "fused": (fused_step, torch.float32, False),
        "fused_tf32": (fused_step, torch.float32, True),
        "fused_bf16": (fused_step, torch.bfloat16, False),
        "naive_fp32": (naive_step, torch.float32, False),
        "naive_tf32": (naive_step, torch.float32, True),
    }

    @pytest.mark.skipif(not cuda_kernel_present(), reason="needs CUDA and the nst_fast CUDA kernels")
    @pytest.mark.parametrize("impl", list(_IMPLS))
    @pytest.mark.parametrize("name,c,down,size", _CUDA, ids=[f"{n}@{s}" for n, _, _, s in _CUDA])
    def test_layer_cuda(benchmark, impl, name, c, down, size):
        benchmark.group = f"cuda {name}@{size}"
        step, dtype, tf32 = _IMPLS[impl]
        inputs, s = cuda_inputs(*layer_shape(c, down, size), dtype)
        state = {"i": 0}
        set_tf32(tf32)

        def run():
            f, a = inputs[state["i"] % len(inputs)]
            state["i"] += 1
            step(f, a, s)
            torch.cuda.synchronize()

        try:
            benchmark.pedantic(run, rounds=30, warmup_rounds=5, iterations=1)
        finally:
            set_tf32(False)


if __name__ == "__main__":
    sys.exit(main())
