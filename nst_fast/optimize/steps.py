"""The machinery of the optimisation loop: device-side bookkeeping of a run, and a
runner that replays a step from a CUDA graph."""
import torch

from ..ops import loop_record


class LoopState:
    """Device-side bookkeeping of a run: best image so far, the running average of the
    images (with avg_decay > 0), non-finite streak, loss history and the last step's row
    of it."""

    def __init__(self, best, best_loss, bad_streak, history, cursor, step=0, avg_decay=0.0, average=None,
                 average_weight=None):
        self.best, self.best_loss, self.bad_streak = best, best_loss, bad_streak
        self.history, self.cursor, self.step = history, cursor, step
        self.avg_decay, self.average, self.average_weight = avg_decay, average, average_weight
        self.row = torch.full((history.size(1),), float("nan"), device=best.device)
        self.improved = torch.zeros((), dtype=torch.bool, device=best.device)

    @classmethod
    def start(cls, x, steps, n_parts, avg_decay=0.0):
        dev = x.device
        averaging = avg_decay > 0
        return cls(
            best=x.detach().clone(),
            best_loss=torch.full((), float("inf"), device=dev),
            # L-BFGS backtracks from a non-finite trial point; only a run of them is fatal.
            bad_streak=torch.zeros((), dtype=torch.int32, device=dev),
            history=torch.full((max(steps, 1), n_parts), float("nan"), device=dev),
            cursor=torch.zeros((1,), dtype=torch.long, device=dev),
            avg_decay=avg_decay,
            average=torch.zeros_like(x.detach()) if averaging else None,
            average_weight=torch.zeros((), device=dev) if averaging else None,
        )

    def record(self, x, total, terms, weights, shown):
        """One step: x and its loss `total` (float32, 0-dim). The history row (and
        self.row) is terms[:shown], then weights @ terms (weights (a, n) for n terms), then
        total. One op where the extension has it (nst_fast/ops/loop_record.py)."""
        loop_record.loop_record_(total, terms, weights, shown, self.best_loss, self.bad_streak, self.row, self.history,
                                 self.cursor, self.improved)
        torch.where(self.improved, x, self.best, out=self.best)
        if self.average is not None:
            # An exponential moving average of the finite images, with the weight of
            # its zero start divided out in output().
            finite = (total - total) == 0  # isfinite in two ops instead of four: NaN for inf and NaN
            keep = torch.where(finite, self.avg_decay, 1.0)
            self.average.copy_(torch.where(finite, self.average * keep + x * (1 - keep), self.average))
            self.average_weight.copy_(self.average_weight * keep + (1 - keep))

    def output(self):
        """The run's result so far: the averaged image with avg_decay, else the best one."""
        if self.average is None:
            return self.best
        return torch.where(self.average_weight > 0, self.average / self.average_weight.clamp(min=1e-12), self.best)

    def output_copy(self):
        """output() as a tensor of its own, which a callback may keep or change."""
        out = self.output()
        return out.clone() if out is self.best else out

    def tensors(self):
        out = {"best": self.best, "best_loss": self.best_loss, "bad_streak": self.bad_streak,
               "history": self.history[: self.step], "step": self.step, "result": self.output()}
        if self.average is not None:
            out.update(average=self.average, average_weight=self.average_weight)
        return out

    def load(self, saved, x, opt):
        """Continue from a checkpoint's tensors (in place: a captured graph stays valid).
        One missing, or of another shape than this run's, raises ValueError before any is
        copied."""
        done = saved["history"].size(0)
        targets = {"x": x, "best": self.best, "best_loss": self.best_loss, "bad_streak": self.bad_streak,
                   "history": self.history[:done]}
        if self.average is not None:
            targets.update(average=self.average, average_weight=self.average_weight)
        for name, target in targets.items():
            if name not in saved:
                raise ValueError(f"{name} is missing")
            if saved[name].shape != target.shape:
                raise ValueError(f"{name} has shape {tuple(saved[name].shape)}, this run's {tuple(target.shape)}")
        opt.load_state_dict({k: v.to(x.device) for k, v in saved["optimizer"].items()})
        with torch.no_grad():
            for name, target in targets.items():
                target.copy_(saved[name])
            self.cursor.fill_(done)
        self.step = saved["step"]


class StepRunner:
    """Runs a step eagerly, or on CUDA replays it from a CUDA graph captured after warm-up.

    Falls back to eager execution (and says why in `why_not`) if capture fails.
    """

    WARMUP = 3

    def __init__(self, step_fn, device, cuda_graph):
        self.step_fn, self.calls, self.graph, self.static = step_fn, 0, None, None
        self.enabled = device.type == "cuda" and cuda_graph is not False
        self.why_not = None if self.enabled else ("not a CUDA device" if device.type != "cuda" else "disabled")
        self.graphed = False
        if self.enabled:
            self.stream = torch.cuda.Stream(device)

    def __call__(self):
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return self.static
        if not self.enabled:
            return self.step_fn()
        # Warm-up steps are real steps, run on a side stream as capture requires.
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = self.step_fn()
        torch.cuda.current_stream().wait_stream(self.stream)
        if self.calls == self.WARMUP:
            self._capture()
        return out

    def _capture(self):
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                static = self.step_fn()
        except Exception as exc:  # an op that cannot be captured: stay eager
            self.enabled, self.why_not = False, f"capture failed: {type(exc).__name__}: {exc}".splitlines()[0]
            torch.cuda.synchronize()
            return
        self.graph, self.static, self.graphed = graph, static, True
