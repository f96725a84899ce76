"""The ops one optimisation step dispatches, by phase: on a GPU each is a kernel
launch, inside a CUDA graph too, and most of the small ones cost their launch.

    python benchmarks/count_step_ops.py [--size 64] [--precision fp32] [--optimizer lbfgs]

Counts with a TorchDispatchMode around one step on the CPU (views and allocations
excluded), the phases told apart by wrapping the loss's terms, the loop's bookkeeping
and the optimiser's step; the backward is the rest. A GPU step in fp32 dispatches as
many (cuDNN's convolutions where the CPU runs conv3x3_winograd).
"""
import argparse
import collections
import os
import sys

from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nst_fast import StyleTransfer, losses, optim, steps  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nst_fast", "examples")
VIEWS = {"detach", "view", "_unsafe_view", "reshape", "slice", "select", "unsqueeze", "squeeze", "permute",
         "expand", "t", "transpose", "diagonal", "alias", "as_strided", "unbind", "split"}
ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty"}  # no kernel runs for these


class OpCounter(TorchDispatchMode):
    """Counts the ops that do work (not views or allocations) dispatched inside it, per phase."""

    def __init__(self):
        super().__init__()
        self.phase = "backward"
        self.counts = collections.defaultdict(collections.Counter)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEWS and name not in ALLOCATIONS:
            self.counts[self.phase][name] += 1
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def wrap(self, cls, method, phase):
        """Count the ops of cls.method under `phase` (patched on the class)."""
        inner = getattr(cls, method)

        def counted(*args, **kwargs):
            outer, self.phase = self.phase, phase
            try:
                return inner(*args, **kwargs)
            finally:
                self.phase = outer

        setattr(cls, method, counted)


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
    content, style = os.path.join(EXAMPLES, "content.png"), os.path.join(EXAMPLES, "style.png")
    StyleTransfer(weights="random", device="cpu").stylize_tensor(
        content, style, size=args.size, steps=4, precision=args.precision, optimizer=args.optimizer,
        report_every=10**9)
    print(f"ops in one step ({args.optimizer}, {args.precision}, {args.size} px), views and allocations excluded")
    print("| phase | ops | the most frequent |")
    print("|---|---|---|")
    for phase in ("forward and losses", "backward", "bookkeeping", "optimiser"):
        c = counter.counts[phase]
        top = ", ".join(f"{n} {k}" for n, k in c.most_common(6))
        print(f"| {phase} | {sum(c.values())} | {top} |")
    print(f"| total | {counter.total()} | |")


if __name__ == "__main__":
    main()
