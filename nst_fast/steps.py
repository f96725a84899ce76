"""The machinery of the optimisation loop: device-side bookkeeping of a run, and a
runner that replays a step from a CUDA graph."""
import torch


class LoopState:
    """Device-side bookkeeping of a run: best image so far, non-finite streak, loss history."""

    def __init__(self, best, best_loss, bad_streak, history, cursor, step=0):
        self.best, self.best_loss, self.bad_streak = best, best_loss, bad_streak
        self.history, self.cursor, self.step = history, cursor, step

    @classmethod
    def start(cls, x, steps, n_parts):
        dev = x.device
        return cls(
            best=x.detach().clone(),
            best_loss=torch.full((), float("inf"), device=dev),
            # L-BFGS backtracks from a non-finite trial point; only a run of them is fatal.
            bad_streak=torch.zeros((), dtype=torch.int32, device=dev),
            history=torch.full((max(steps, 1), n_parts), float("nan"), device=dev),
            cursor=torch.zeros((1,), dtype=torch.long, device=dev),
        )

    def record(self, x, total, parts):
        improved = total < self.best_loss  # False for NaN
        self.best.copy_(torch.where(improved, x, self.best))
        self.best_loss.copy_(torch.where(improved, total, self.best_loss))
        self.bad_streak.copy_(torch.where(torch.isfinite(total), 0, self.bad_streak + 1))
        row = torch.stack([p.float() for p in parts]).unsqueeze(0)
        self.history.index_copy_(0, self.cursor.clamp(max=self.history.size(0) - 1), row)
        self.cursor.add_(1)

    def tensors(self):
        return {"best": self.best, "best_loss": self.best_loss, "bad_streak": self.bad_streak,
                "history": self.history[: self.step], "step": self.step}

    def load(self, saved, x, opt):
        """Continue from a checkpoint's tensors (in place: a captured graph stays valid)."""
        with torch.no_grad():
            x.copy_(saved["x"])
            self.best.copy_(saved["best"])
            self.best_loss.copy_(saved["best_loss"])
            self.bad_streak.copy_(saved["bad_streak"])
            done = saved["history"].size(0)
            self.history[:done].copy_(saved["history"])
            self.cursor.fill_(done)
        self.step = saved["step"]
        opt.load_state_dict({k: v.to(x.device) for k, v in saved["optimizer"].items()})


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
