"""Errors a user can act on (and Ctrl-C's Interrupted): the CLI prints their message on
one line and exits non-zero."""


class NstError(Exception):
    """Bad input or options, or a missing resource."""


class UnknownBackend(NstError, ValueError):
    """NST_FAST_BACKEND, or set_backend's argument, names no backend."""


class WeightsUnavailable(NstError):
    """The requested VGG-19 weights cannot be had (offline, or no such file)."""


class CheckpointMismatch(NstError):
    """A checkpoint from a run with other images or options than this one."""


class _ImageSoFar:
    """Of a run that ended before its last step: `image` holds the image so far (or
    None), `step` the steps it had finished."""

    def __init__(self, message, image=None, step=None):
        super().__init__(message)
        self.image = image
        self.step = step


class RunStopped(_ImageSoFar, NstError):
    """A run that an error ended before its last step, with its image so far."""


class NonFiniteLoss(RunStopped):
    """The loss became NaN or infinite; `image` holds the last finite image."""


class Interrupted(_ImageSoFar, KeyboardInterrupt):
    """The run was interrupted (Ctrl-C); `image` holds the image so far. A
    KeyboardInterrupt, and no NstError, so that `except Exception` or `except NstError`
    around a run lets the user's Ctrl-C through."""


class CheckpointNotWritten(RunStopped):
    """A checkpoint could not be written (a full disk); `image` holds the image so far,
    the whole result when it was the run's last checkpoint."""


class OutOfMemory(RunStopped):
    """The device ran out of memory during the run; `image` holds the image so far (None
    where the first scale's targets did not fit)."""
