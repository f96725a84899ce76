"""What a run is given besides its images and options (Hooks), what a callback sees
after each step (StepInfo), and what every run returns (RunResult)."""
import dataclasses
import os
from typing import Callable, Optional

import torch

from ..errors import NstError
from ..imaging import images
from ..runtime.files import not_a_file


@dataclasses.dataclass
class StepInfo:
    """What a callback sees after each step. Losses are 0-dim tensors on the run's
    device; converting them to float waits for the device, so do it sparingly."""

    step: int  # 1-based, counted over all scales
    steps: int  # total steps of the run
    size: tuple  # (H, W) being optimised
    losses: dict
    image: torch.Tensor  # the best image so far, (1, 3, H, W), not yet clamped to [0, 1]; a copy of its own
    done: float = 0.0  # the run's work done so far, steps weighted by their pixels (for time estimates)


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What a run calls and writes while it runs.

    callback(StepInfo) after each step; snapshot(step, image) with the best image so
    far every save_every steps; live: a nst_fast.app.web.LivePreview (or anything with
    its update(info, image) and finish()), updated whenever the losses are read back
    (report_every) and finished when the run ends, however it ends. checkpoint: a path
    to save the run's state to (every checkpoint_every steps, at the end of each scale,
    and on Ctrl-C); interrupt_checkpoint: where Ctrl-C saves one if checkpoint is not
    given."""

    callback: Optional[Callable] = None
    save_every: int = 0
    snapshot: Optional[Callable] = None
    live: object = None
    checkpoint: Optional[str] = None
    interrupt_checkpoint: Optional[str] = None

    def check(self) -> None:
        """An NstError for a hook that cannot work, before any step runs (the live view's
        own check, check_live, comes first: a run finishes a live view it was given)."""
        if self.callback is not None and not callable(self.callback):
            raise NstError(f"callback must be a function of a StepInfo, got {self.callback!r}")
        _check_snapshots(self.save_every, self.snapshot)
        for name in ("checkpoint", "interrupt_checkpoint"):
            if getattr(self, name) is not None:
                _check_writable(name, getattr(self, name))  # now, not after the steps it would have kept

    @property
    def watch_steps(self) -> bool:
        """Whether anything looks at the steps (each step then copies out its image)."""
        return self.callback is not None or self.snapshot is not None or self.live is not None

    def after_step(self, info: StepInfo, finish: Callable, live_every: int) -> None:
        """Call each hook due at this step; finish(image) gives the image a user sees."""
        if self.callback is not None:
            self.callback(info)
        if self.snapshot is not None and info.step % self.save_every == 0:
            self.snapshot(info.step, finish(info.image))
        if self.live is not None and (info.step % live_every == 0 or info.step == info.steps):
            self.live.update(info, finish(info.image))


@dataclasses.dataclass
class RunResult:
    """What a run made and how. For a run stopped early (RunStopped, Interrupted, as
    their .result), image is the image so far (None where there was none yet) and
    steps the steps it had finished."""

    image: Optional[torch.Tensor]  # (1, 3, H, W) in [0, 1] on the CPU
    history: list  # one row per step: each loss part and the size, as history.write_json writes them
    options: object  # the resolved Options the run ran with
    sizes: list  # (H, W) of each scale run
    steps: int  # steps done, over all scales
    backend: str  # the ops' implementation on the run's first device: "extension" or "reference"
    cuda_graph: bool = False  # whether the last scale's steps ran as CUDA-graph replays
    why_not: Optional[str] = "no steps were run"  # why not, where they did not
    notes: list = dataclasses.field(default_factory=list)  # what the run changed or found, for the user
    alpha: Optional[torch.Tensor] = None  # the content's transparency at the output's size, if it had some

    @property
    def note(self) -> Optional[str]:
        """The notes on one line, or None."""
        return "; ".join(self.notes) or None

    def to_pil(self):
        """The image as a PIL image, RGBA where the content had transparency."""
        return images.to_pil(images.with_alpha(self.image, self.alpha))


def _check_snapshots(save_every, snapshot) -> None:
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
        raise NstError(f"save_every must be 0 (off) or a number of steps, got {save_every!r}")
    if snapshot is not None and not callable(snapshot):
        raise NstError(f"snapshot must be a function of (step, image), got {snapshot!r}")
    if (snapshot is None) != (save_every == 0):
        raise NstError("save_every and snapshot go together: snapshot(step, image) is called every save_every steps")


def check_live(live) -> None:
    if live is not None and not all(callable(getattr(live, name, None)) for name in ("update", "finish")):
        raise NstError(f"live must be a nst_fast.app.web.LivePreview, or have its update(info, image) and finish(), "
                       f"got {live!r}")


def _check_writable(name, path) -> None:
    """A file the run will write: a path in a folder that exists, and a regular file or
    none (no folder, device or FIFO)."""
    if not isinstance(path, (str, os.PathLike)):
        raise NstError(f"{name} must be a file path, got {path!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NstError(f"the folder of {name} {path} does not exist")
    problem = not_a_file(name, path)
    if problem:
        raise NstError(problem)
