"""The ops one optimisation step dispatches, by phase: on a GPU each is a kernel
launch, inside a CUDA graph too, and most of the small ones cost their launch.

    python benchmarks/count_step_ops.py [--size 64] [--precision fp32] [--optimizer lbfgs]

Counts with a TorchDispatchMode around one step on the CPU (views and allocations
excluded), the phases told apart by wrapping the loss's terms, the loop's bookkeeping
and the optimiser's step; the backward is the rest. A GPU step in fp32 dispatches as
many (cuDNN's convolutions where the CPU runs conv3x3_winograd).
"""
import argparse

import common
from common import OpCounter

from nst_fast import StyleTransfer
from nst_fast.losses import gatys as losses
from nst_fast.optimize import optim, steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--optimizer", default="lbfgs")
    args = p.parse_args(argv)
    counter = OpCounter()
    counter.wrap(losses.GatysLoss, "terms", "forward and losses")
    counter.wrap(steps.LoopState, "record", "bookkeeping")
    for cls in (optim.LBFGS, optim.Adam):
        counter.wrap(cls, "step", "optimiser")
    runner_call, calls = steps.StepRunner.__call__, []

    def counted_step(runner):
        calls.append(None)
        if len(calls) != 3:  # a step after the first two, which set things up
            return runner_call(runner)
        with counter:
            return runner_call(runner)

    steps.StepRunner.__call__ = counted_step
    content, style = common.example_paths()
    StyleTransfer(weights="random", device="cpu").stylize_tensor(
        content, style, size=args.size, steps=4, precision=args.precision, optimizer=args.optimizer,
        report_every=10**9)
    print(f"ops in one step ({args.optimizer}, {args.precision}, {args.size} px), views and allocations excluded")
    report = common.Report()
    report.table("phase", "ops", "the most frequent")
    for phase in ("forward and losses", "backward", "bookkeeping", "optimiser"):
        c = counter.counts[phase]
        report.row(phase, sum(c.values()), ", ".join(f"{n} {k}" for n, k in c.most_common(6)))
    report.row("total", counter.total(), "")


if __name__ == "__main__":
    main()
