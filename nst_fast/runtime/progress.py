"""A progress line for long runs: the bar, the current losses and the time left."""
import sys
import time


class Progress:
    """Progress with the current losses on stderr: a bar redrawn in place on a
    terminal; in a log (stderr not a terminal), one line at the first step, about
    every 5% of the run and at the end."""

    def __init__(self, enabled, every, stream=None):
        self.stream = stream or sys.stderr
        self.enabled, self.every, self.start = enabled, every, time.time()
        self.tty = self.stream.isatty()
        self._last = 0  # length of the bar last drawn on the terminal

    def _due(self, info):
        if info.step == info.steps:
            return True
        if self.tty:
            return info.step % self.every == 0
        return info.step == 1 or info.step % max(self.every, info.steps // 20, 1) == 0

    def __call__(self, info):
        if not self.enabled or not self._due(info):
            return
        width = 24
        # Steps at larger scales cost more: the bar and the time left follow the work done.
        fraction = info.done or info.step / max(1, info.steps)
        done = int(width * fraction)
        losses = info.losses
        elapsed = time.time() - self.start
        left = elapsed * (1 - fraction) / fraction
        line = (f"[{'#' * done}{'.' * (width - done)}] {info.step}/{info.steps} "
                f"{info.size[1]}x{info.size[0]} total {float(losses['total']):.4g} "
                f"content {float(losses['content']):.3g} style {float(losses['style']):.3g} "
                f"{elapsed:.0f}s" + (f", {left:.0f}s left" if info.step < info.steps else ""))
        if self.tty:
            # Pad so that a shorter line fully covers the one it replaces.
            self.stream.write("\r" + line.ljust(self._last))
            self._last = len(line)
            if info.step == info.steps:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
