"""Ctrl-C held back while a run's state changes, or while a stopping run saves its work:
an interrupt then stops a run at a step's boundary, never between an update and its
count (so a checkpoint is never one step behind the image it holds), and a second one
never cuts the saving of the first one's work short.

Only SIGINT and SIGTERM whose handler is Python code are held (Python's own SIGINT
handler raises KeyboardInterrupt, as the CLI's handler does); ignored signals and the
system's defaults are left as they are. Handlers can be set in the main thread only,
where Python runs them: in another thread nothing is held.
"""
import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Deferral:
    """A critical section that may begin inside its block: from hold() to the end of the
    `with` block, SIGINT and SIGTERM are only noted; at the end their handlers are put
    back and the first signal noted goes to its handler (Ctrl-C's KeyboardInterrupt is
    raised there, at the block's boundary). One Deferral serves one block after another.
    """

    def __init__(self):
        self._handlers = {}  # signal -> the handler it had before hold()
        self._noted = None  # (signum, frame) of the first signal while held

    def hold(self):
        """Note the signals from now to the block's end (a second call changes nothing)."""
        if self._handlers or threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                self._handlers[signum] = handler
                signal.signal(signum, self._note)

    def _note(self, signum, frame):
        if self._noted is None:
            self._noted = (signum, frame)

    def release(self, handle=True):
        """Put the handlers back, then hand them the signal noted (handle=False: drop it)."""
        handlers, noted = self._handlers, self._noted
        self._handlers, self._noted = {}, None
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if noted is not None and handle:
            handlers[noted[0]](*noted)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()


@contextlib.contextmanager
def ignored():
    """SIGINT and SIGTERM dropped while the block runs: for the saves of a run that an
    interrupt is already stopping, which a second Ctrl-C would only cut short."""
    held = Deferral()
    try:
        held.hold()
        yield
    finally:
        held.release(handle=False)
