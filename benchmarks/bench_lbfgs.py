"""L-BFGS update alone: the fused op (nst_fast) vs the same step in PyTorch ops.

    python benchmarks/bench_lbfgs.py [--device cpu|cuda] [--sizes 512,1024] [--history 10]

Three versions of the same sync-free step over the same state: the two-loop
recursion nst_fast first used, the compact form in PyTorch ops
(nst_fast.ops.reference.lbfgs_step, the fallback), and the fused op
torch.ops.nst_fast.lbfgs_step (LBFGS.step where the extension has the kernel). On
CUDA each step is captured in a CUDA graph and replayed, as in the optimisation
loop. Prints median ms per update, the ratios, and the ops each version dispatches
per step (on a GPU, about one kernel each).
"""
import argparse
from unittest import mock

import common
import torch
from common import OpCounter

from nst_fast.ops import reference
from nst_fast.optimize.optim import LBFGS


class ReferenceLBFGS(LBFGS):
    """The compact form in PyTorch ops."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._workspace = None


def two_loop_direction(g, W, WW, valid, idx):
    """reference.lbfgs_direction's -H g by the two-loop recursion."""
    h = valid.numel()
    order = (idx - 1 - torch.arange(h, device=valid.device)) % h  # newest first
    S, Y = W[:h].index_select(0, order), W[h:].index_select(0, order)
    valid = valid.index_select(0, order)
    rho = 1.0 / torch.where(valid, WW[:h, h:].diagonal()[order], 1.0).to(g.dtype)
    q, alphas = g, []
    for i in range(h):
        a = torch.where(valid[i], rho[i] * torch.dot(S[i], q), 0.0)
        q = q - a * Y[i]
        alphas.append(a)
    gamma = torch.where(valid[0], torch.dot(S[0], Y[0]) / torch.dot(Y[0], Y[0]), 1.0)
    r = gamma * q
    for i in reversed(range(h)):
        b = rho[i] * torch.dot(Y[i], r)
        r = r + torch.where(valid[i], alphas[i] - b, 0.0) * S[i]
    return -r


class TwoLoopLBFGS(ReferenceLBFGS):
    def step(self, x, loss, grad):
        with mock.patch.object(reference, "lbfgs_direction", two_loop_direction):
            super().step(x, loss, grad)


def update_ms(cls, n, history, device, repeats):
    """-> (median ms per step, ops dispatched by one step)"""
    gen = torch.Generator(device=device).manual_seed(0)
    curvature = torch.rand(n, generator=gen, device=device) + 0.1
    x = torch.randn(n, generator=gen, device=device)
    opt = cls(x, history=history)
    loss, grad = torch.zeros((), device=device), torch.zeros(n, device=device)

    def evaluate():
        grad.copy_(curvature * x)
        loss.copy_(0.5 * torch.dot(grad, x))

    for _ in range(history + 5):  # fill the history
        evaluate()
        opt.step(x, loss, grad)
    run = lambda: opt.step(x, loss, grad)  # noqa: E731
    snapshot, x_before = opt.state_dict(), x.clone()
    with OpCounter() as counter:
        run()
    opt.load_state_dict(snapshot)
    x.copy_(x_before)
    if device.type == "cuda":
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            opt.step(x, loss, grad)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            opt.step(x, loss, grad)
        run = graph.replay
    # a fresh gradient before each update (untimed), `repeats` updates timed one by one
    ms = common.median_ms(run, device=device, warmup=0, min_time=0.0, min_samples=repeats, setup=evaluate)
    return ms, counter.total()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="512,1024", help="long sides; the image is size x (2/3 size) x 3")
    p.add_argument("--history", type=int, default=10)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    repeats = args.repeats or (200 if device.type == "cuda" else 20)
    if not LBFGS(torch.zeros(8, device=device), history=args.history).fused:
        raise SystemExit(f"no fused L-BFGS kernel for {device.type} at history {args.history} "
                         "(is the extension built?)")
    report = common.Report()
    report.table("size", "two-loop ms", "compact ms", "fused ms", "two-loop / fused", "compact / fused",
                 "ops per step: two-loop, compact, fused")
    for size in (int(s) for s in args.sizes.split(",")):
        n = 3 * size * (2 * size // 3)
        (loop, loop_ops), (compact, compact_ops), (fused, fused_ops) = (
            update_ms(cls, n, args.history, device, repeats) for cls in (TwoLoopLBFGS, ReferenceLBFGS, LBFGS))
        report.row(f"{size}x{2 * size // 3}", f"{loop:.3f}", f"{compact:.3f}", f"{fused:.3f}", f"{loop / fused:.2f}x",
                   f"{compact / fused:.2f}x", f"{loop_ops}, {compact_ops}, {fused_ops}")


if __name__ == "__main__":
    main()
