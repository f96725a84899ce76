"""Fused CUDA style loss vs naive PyTorch, per VGG-19 style layer (forward + backward).

As a script:  python benchmarks/bench_cuda_layers.py [--sizes 512,1024] [--md out.md]
              [--sweep-splitk] [--ab-async] [--ab-resident]
              (also writes to $NST_FAST_BENCH_MD when set)
Under pytest: pytest benchmarks/bench_cuda_layers.py   (pytest-benchmark; skips without CUDA)

Times are medians of CUDA-event-timed replays of a CUDA graph holding several
calls (GPU time; eager calls of the small layers are bound by Python and
dispatcher overhead, which the "fused eager" column shows), after warm-up; inputs
rotate over enough copies to exceed L2, so small layers are not timed out of cache.
NST_FAST_CUDA_ASYNC=0, NST_FAST_CUDA_RESIDENT=0 and NST_FAST_SPLITK_PER_SM=N switch
kernel variants for A/B runs. "floor" is the bytes-moved floor of forward + backward for
float32 features (F read once forward, F read + dF written once backward) at the
device-to-device copy bandwidth measured in the same run.
"""
import argparse
import math
import os
import statistics
import sys

import torch

try:
    import pytest
except ImportError:  # script use without pytest
    pytest = None

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nst_fast import backend, ops  # noqa: E402

LAYERS = [("relu1_1", 64, 1), ("relu2_1", 128, 2), ("relu3_1", 256, 4), ("relu4_1", 512, 8),
          ("relu5_1", 512, 16)]
L2_ROTATE_BYTES = 160 << 20


def cuda_kernel_present():
    try:
        return torch.cuda.is_available() and backend._has_kernel("cuda")
    except Exception:
        return False


def layer_shape(channels, down, size):
    return channels, (size // down) ** 2


def make_inputs(c, m, dtype=torch.float32, batch=1, sets=None):
    nbytes = batch * c * m * torch.tensor([], dtype=dtype).element_size()
    if sets is None:
        sets = max(1, min(64, math.ceil(L2_ROTATE_BYTES / nbytes)))
    out = []
    for _ in range(sets):
        f = (torch.rand(batch, c, m, device="cuda") * 1.5).to(dtype).requires_grad_(True)
        t = torch.rand(batch, c, m, device="cuda")
        a = torch.bmm(t, t.transpose(1, 2))
        out.append((f, a))
    return out, 1.0 / (4.0 * c * c * m * m)


def fused_step(f, a, s):
    loss = ops.style_loss(f, a, s)
    return torch.autograd.grad(loss, f)[0]


def naive_step(f, a, s):
    g = torch.bmm(f, f.transpose(1, 2))
    loss = torch.nn.functional.mse_loss(g, a, reduction="sum") * s
    return torch.autograd.grad(loss, f)[0]


def time_ms(fn, inputs, warmup=5, samples=25, min_sample_ms=0.5):
    """Median milliseconds per call of fn(*inputs[i]) rotating i."""
    n = len(inputs)
    for i in range(warmup):
        fn(*inputs[i % n])
    torch.cuda.synchronize()
    # calls per sample so that a sample lasts about min_sample_ms
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(n):
        fn(*inputs[i])
    end.record()
    end.synchronize()
    per = start.elapsed_time(end) / n
    inner = max(1, min(200, math.ceil(min_sample_ms / max(per, 1e-3))))
    times = []
    k = 0
    for _ in range(samples):
        start.record()
        for _ in range(inner):
            fn(*inputs[k % n])
            k += 1
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def time_graph_ms(fn, inputs, samples=20, min_calls=8):
    """Median milliseconds per call, GPU time: calls captured in one CUDA graph, then replayed.

    Eager calls of small layers are bound by Python/dispatcher launch overhead, not
    by the GPU; graph replays time the kernels themselves (as a captured
    optimisation step would run them). Falls back to eager timing (returns
    (ms, False)) where capture fails.
    """
    n = len(inputs)
    calls = max(n, min_calls)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(min(n, 3)):
                fn(*inputs[i])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn(*inputs[i % n])
    except Exception as exc:  # pragma: no cover - reported in the table
        print(f"  (graph capture failed: {type(exc).__name__}: {exc}; eager timing)", flush=True)
        return time_ms(fn, inputs), False
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(samples):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del graph
    return statistics.median(times), True


def copy_bandwidth_gbs(nbytes=1 << 30):
    src = torch.empty(nbytes // 4, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda a, b: b.copy_(a), [(src, dst)], warmup=3, samples=15, min_sample_ms=0.0)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def set_tf32(enabled):
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def bench_layer(name, c, down, size, bw_gbs, batch=1):
    c, m = layer_shape(c, down, size)
    inputs, s = make_inputs(c, m, batch=batch)
    row = {"layer": name, "size": size, "C": c, "M": m, "graph": True}

    def timed(key, fn, data):
        row[key], ok = time_graph_ms(fn, data)
        row["graph"] &= ok

    set_tf32(False)
    timed("fused", lambda f, a: fused_step(f, a, s), inputs)
    row["fused_eager"] = time_ms(lambda f, a: fused_step(f, a, s), inputs)
    # forward alone and backward alone (for the notes)
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
    binputs, _ = make_inputs(c, m, torch.bfloat16, batch=batch)
    timed("fused_bf16", lambda f, a: fused_step(f, a, s), binputs)
    del binputs
    fbytes = batch * c * m * 4
    row["floor"] = 3 * fbytes / (bw_gbs * 1e9) * 1e3
    return row


def sweep_splitk(size=512, values=(1, 2, 4, 8, 16)):
    rows = []
    old = os.environ.get("NST_FAST_SPLITK_PER_SM")
    for name, c, down in LAYERS:
        c, m = layer_shape(c, down, size)
        inputs, s = make_inputs(c, m)
        r = {"layer": name, "size": size}
        for v in values:
            os.environ["NST_FAST_SPLITK_PER_SM"] = str(v)
            r[v] = time_graph_ms(lambda f, a: torch.ops.nst_fast.style_loss_forward(f.detach(), a, s),
                                 inputs)[0]
        rows.append(r)
        del inputs
    if old is None:
        os.environ.pop("NST_FAST_SPLITK_PER_SM", None)
    else:
        os.environ["NST_FAST_SPLITK_PER_SM"] = old
    lines = ["", f"Split-K sweep (forward only, ms, {size} px), blocks per SM: "
             + ", ".join(map(str, values)), "",
             "| layer | " + " | ".join(f"{v}/SM" for v in values) + " |",
             "|---|" + "---|" * len(values)]
    for r in rows:
        lines.append(f"| {r['layer']} | " + " | ".join(f"{r[v]:.4f}" for v in values) + " |")
    return "\n".join(lines)


def ab_switch(env, title, layers=LAYERS, sizes=(512, 1024), a="1", b="0"):
    """fwd+bwd with env=a (the default: a kernel feature on) and env=b, float32 and
    bfloat16; speed-up = time(b) / time(a)."""
    old = os.environ.get(env)
    lines = ["", f"{title} A/B (fused fwd+bwd, ms, CUDA-graph replays)", "",
             f"| layer | px | dtype | {env}={a} | {env}={b} | speed-up |",
             "|---|---|---|---|---|---|"]
    for size in sizes:
        for name, c, down in layers:
            for dtype in (torch.float32, torch.bfloat16):
                c_, m = layer_shape(c, down, size)
                inputs, s = make_inputs(c_, m, dtype)
                t = {}
                for flag in (a, b):
                    os.environ[env] = flag
                    t[flag] = time_graph_ms(lambda f, a: fused_step(f, a, s), inputs)[0]
                kind = str(dtype).replace("torch.", "")
                lines.append(f"| {name} | {size} | {kind} | {t[a]:.4f} | {t[b]:.4f} | {t[b] / t[a]:.2f} |")
                del inputs
    if old is None:
        os.environ.pop(env, None)
    else:
        os.environ[env] = old
    return "\n".join(lines)


def format_table(rows, bw_gbs):
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="512,1024")
    p.add_argument("--md", default=os.environ.get("NST_FAST_BENCH_MD"))
    p.add_argument("--sweep-splitk", action="store_true")
    p.add_argument("--ab-async", action="store_true", help="also time NST_FAST_CUDA_ASYNC=0")
    p.add_argument("--ab-resident", action="store_true",
                   help="also time NST_FAST_CUDA_RESIDENT=0 (the layers with C <= 128) and =256 (relu3_1's "
                        "256-column panel against the default)")
    args = p.parse_args(argv)
    if not cuda_kernel_present():
        print("bench_cuda_layers: no CUDA GPU or no nst_fast CUDA kernel; nothing to do")
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
    text = format_table(rows, bw)
    if args.sweep_splitk:
        text += "\n" + sweep_splitk()
    if args.ab_async:
        text += "\n" + ab_switch("NST_FAST_CUDA_ASYNC", "cp.async pipeline")
    if args.ab_resident:
        small = [layer for layer in LAYERS if layer[1] <= 128]
        text += "\n" + ab_switch("NST_FAST_CUDA_RESIDENT", "D-resident backward", small)
        c256 = [layer for layer in LAYERS if 128 < layer[1] <= 256]
        text += "\n" + ab_switch("NST_FAST_CUDA_RESIDENT", "256-column D panel (2 blocks per SM)", c256, a="256", b="1")
    print(text)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(text + "\n")
    return 0


# ---------------------------------------------------------------- pytest-benchmark
if pytest is not None:
    pytestmark = pytest.mark.skipif(not cuda_kernel_present(), reason="needs CUDA and the nst_fast CUDA kernels")

    def _bench(benchmark, step, c, m, dtype=torch.float32, tf32=False):
        inputs, s = make_inputs(c, m, dtype)
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

    _PARAMS = [(n, c, d, size) for size in (512, 1024) for n, c, d in LAYERS]
    _IDS = [f"{n}@{size}" for n, _, _, size in _PARAMS]

    # (step, features dtype, TF32 matmuls allowed) per implementation.
    _IMPLS = {
        "fused": (fused_step, torch.float32, False),
        "fused_tf32": (fused_step, torch.float32, True),
        "fused_bf16": (fused_step, torch.bfloat16, False),
        "naive_fp32": (naive_step, torch.float32, False),
        "naive_tf32": (naive_step, torch.float32, True),
    }

    @pytest.mark.parametrize("impl", list(_IMPLS))
    @pytest.mark.parametrize("name,c,down,size", _PARAMS, ids=_IDS)
    def test_layer(benchmark, impl, name, c, down, size):
        benchmark.group = f"{name}@{size}"
        step, dtype, tf32 = _IMPLS[impl]
        _bench(benchmark, step, *layer_shape(c, down, size), dtype=dtype, tf32=tf32)


if __name__ == "__main__":
    sys.exit(main())
