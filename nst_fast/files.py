"""Atomic file writes: a temporary file beside the target, then a rename."""
import os
import tempfile


def atomic_write(path, write, suffix=""):
    """Call write(binary_file) on a temporary file and rename it to `path`: the file
    at `path` is then whole or absent, never half written."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".nst_fast-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
