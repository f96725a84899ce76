"""The steps of one scale of a run: forward, backward and the optimiser's update,
captured in a CUDA graph where it can be. Ctrl-C and out of memory end the run with
its image so far and a checkpoint; a non-finite loss and a full disk with its image so
far."""
import dataclasses
from typing import Callable, Optional

import torch

from ..errors import CheckpointNotWritten, Interrupted, NonFiniteLoss, OutOfMemory
from ..runtime import interrupts
from .devices import autocast_mode, is_out_of_memory, memory_advice, tf32_mode
from .optim import make_optimizer
from .result import Hooks, StepInfo
from .steps import LoopState, StepRunner

LBFGS_MAX_STEP = 0.1  # largest change of any pixel value (in [0, 1]) per L-BFGS step
MAX_NONFINITE = 8  # consecutive NaN/inf evaluations that end a run


@dataclasses.dataclass(frozen=True)
class Scale:
    """A scale's place in its run."""

    steps: int  # the steps of this scale
    step_offset: int  # the run's steps before this scale
    total_steps: int  # the run's steps over all scales
    work_before: float = 0.0  # the run's work done before this scale, as a fraction (StepInfo.done)
    work_per_step: float = 0.0  # and per step of this scale


class Loop:
    """The steps of one scale, from x0 or from a checkpoint (restore(state, x, optimiser)).

    save_checkpoint(state, x, optimiser, path) writes hooks.checkpoint every
    opts.checkpoint_every steps and at the end, and on Ctrl-C or out of memory (there
    to hooks.interrupt_checkpoint where there is no checkpoint).
    finish(image) gives the image a user sees (colour preservation)."""

    def __init__(self, loss_fn, x0, opts, scale: Scale, devices, hooks: Hooks, save_checkpoint: Callable,
                 finish: Callable, restore: Optional[Callable] = None):
        self.loss_fn, self.opts, self.scale, self.devices = loss_fn, opts, scale, devices
        self.hooks, self.save_checkpoint, self.finish = hooks, save_checkpoint, finish
        self.x = x0.clone().requires_grad_(True)
        self.optimizer = _optimizer(opts, self.x)
        self.names = loss_fn.part_names()
        self.state = LoopState.start(self.x, scale.steps, len(self.names), opts.avg_decay)
        if restore is not None:
            restore(self.state, self.x, self.optimizer)
        self.weights, self.shown = loss_fn.history_weights(devices[0]), loss_fn.shown_terms()
        # From a step's first change of the run's state to its count: Ctrl-C waits for the
        # step's end, so that a checkpoint never holds an update without its step.
        self.update = interrupts.Deferral()
        eager_because = _eager_because(opts, devices)
        self.runner = StepRunner(self._one_step, devices[0], False if eager_because else opts.cuda_graph)
        if eager_because and devices[0].type == "cuda":
            self.runner.why_not = eager_because

    def run(self) -> LoopState:
        """The scale's steps -> the LoopState at the end; a run that stops early raises
        (RunStopped, Interrupted) with the finished image so far."""
        out_of_memory = None
        try:
            for step in range(self.state.step + 1, self.scale.steps + 1):
                self._take_step(step)
        except KeyboardInterrupt:
            # state.step: the steps finished, as the checkpoint holds (Ctrl-C mostly comes in mid-step).
            with interrupts.ignored():
                message = self._checkpoint_on_stop(f"interrupted at step {self._run_step()}")
                image = self._so_far()
            raise Interrupted(message, image=image, step=self._run_step()) from None
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = f"ran out of {self.devices[0].type.upper()} memory at step {self._run_step() + 1}"
        if out_of_memory:
            # Out here, not in the except clause, whose traceback keeps the failed step's tensors.
            if self.devices[0].type == "cuda":
                torch.cuda.empty_cache()
            message = self._checkpoint_on_stop(f"{out_of_memory}; {memory_advice(self.devices[0])}")
            raise OutOfMemory(message, image=self._so_far(), step=self._run_step())
        if self.hooks.checkpoint:
            self._write_checkpoint(self.hooks.checkpoint)
        return self.state

    @property
    def cuda_graph(self) -> tuple:
        """(whether the steps ran as CUDA-graph replays, why not where they did not)."""
        why_not = self.runner.why_not or (None if self.runner.graphed
                                          else "fewer steps than the warm-up before capture")
        return self.runner.graphed, why_not

    def _one_step(self):
        with tf32_mode(self.opts.precision):
            with autocast_mode(self.opts.precision, self.devices):
                total, terms = self.loss_fn.terms(self.x)
            (grad,) = torch.autograd.grad(total, self.x)
        self.update.hold()
        with torch.no_grad():
            self.state.record(self.x, total.detach(), terms.detach(), self.weights, self.shown)
            self.optimizer.step(self.x, total.detach(), grad)
        return self.state.row  # the step's parts, in names' order

    def _take_step(self, step: int) -> None:
        with self.update:
            if self.runner.graphed:  # a replay is the whole step at once: nothing in it to interrupt
                self.update.hold()
            row = self.runner()
            self.state.step = step
        if self.hooks.watch_steps:
            self._tell_hooks(step, row)
        if step % self.opts.report_every == 0 or step == self.scale.steps:
            self._check_finite(row)
        if self.hooks.checkpoint and self.opts.checkpoint_every and step % self.opts.checkpoint_every == 0:
            self._write_checkpoint(self.hooks.checkpoint)

    def _tell_hooks(self, step: int, row) -> None:
        scale = self.scale
        parts = dict(zip(self.names, row.clone().unbind()))  # the hooks' to keep
        info = StepInfo(scale.step_offset + step, scale.total_steps, tuple(self.x.shape[-2:]), parts,
                        self.state.output_copy(), done=min(1.0, scale.work_before + step * scale.work_per_step))
        self.hooks.after_step(info, self.finish, self.opts.report_every)

    def _check_finite(self, row) -> None:
        if self.state.bad_streak >= MAX_NONFINITE or not torch.isfinite(self.state.best_loss):
            raise NonFiniteLoss(f"the loss became {float(row[-1])} at step {self._run_step()} and did "
                                "not recover; lower the loss weights or the learning rate",
                                image=self._so_far(), step=self._run_step())

    def _run_step(self) -> int:
        """The steps finished, counted over the run."""
        return self.scale.step_offset + self.state.step

    def _so_far(self) -> torch.Tensor:
        return self.finish(self.state.output())

    def _write_checkpoint(self, path) -> None:
        try:
            self.save_checkpoint(self.state, self.x, self.optimizer, path)
        except OSError as exc:  # the image so far goes with the error: a full disk loses no work
            raise CheckpointNotWritten(f"could not write the checkpoint {path}: {exc.strerror or exc}",
                                       image=self._so_far(), step=self._run_step()) from exc

    def _checkpoint_on_stop(self, message: str) -> str:
        """`message` of a run that stops early, once its checkpoint is written (or why not)."""
        path = self.hooks.checkpoint or self.hooks.interrupt_checkpoint
        if path:
            try:
                self._write_checkpoint(path)
            except CheckpointNotWritten as exc:
                message += f"; {exc}"
        return message


def _optimizer(opts, x):
    if opts.optimizer == "lbfgs":
        return make_optimizer("lbfgs", x, lr=opts.lr or 1.0, history=opts.lbfgs_history, max_step=LBFGS_MAX_STEP)
    return make_optimizer("adam", x, lr=opts.lr or 0.02)


def _eager_because(opts, devices) -> Optional[str]:
    """Why the steps cannot be captured in a CUDA graph, or None."""
    if len(devices) > 1:
        return "the network is split over several devices"
    if opts.style_loss == "w2":  # eigh checks its result on the host, which capture forbids
        return "the W2 style loss's eigendecomposition synchronises with the host"
    return None
