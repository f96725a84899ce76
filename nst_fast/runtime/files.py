"""Files: atomic writes (a temporary file beside the target, then a rename) and the
images a folder holds."""
import errno
import os
import stat
import tempfile
from typing import Optional

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_TEMP_PREFIX = ".nst_fast-"


def _new_file_mode(path) -> int:
    """The permissions `path` would get from open(): its own where it exists (a rewrite
    keeps them), else 0o666 less the umask. mkstemp makes its file 0o600."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# The kinds of file that are neither regular files nor folders, as messages name them.
_SPECIAL_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                  (stat.S_ISSOCK, "a socket"))


def special_kind(path) -> Optional[str]:
    """What `path` is where it exists as neither a regular file nor a folder (a link
    followed): "a FIFO", "a character device"...; else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # absent, unreadable or no path at all: told of when written
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((kind for is_kind, kind in _SPECIAL_KINDS if is_kind(mode)), "a special file")


def not_a_file(name, path) -> Optional[str]:
    """Why a run cannot write the file `path` (`name` in the message): it is a folder, or
    a device, FIFO or socket, which atomic_write's rename would replace by a regular file
    (as root, /dev/null would become a file anyone can write); None where it is a
    regular file or absent."""
    if os.path.isdir(path):
        return f"{name} {path} is a folder; name a file"
    kind = special_kind(path)
    return f"{name} {path} is {kind}, not a regular file; name another file" if kind else None


def atomic_write(path, write, suffix=""):
    """Call write(binary_file) on a temporary file and rename it to `path`: the file
    at `path` is then whole or absent, never half written, even after a power cut
    (the data reach the disk before the rename). A device, FIFO or socket at `path` is
    left alone (FileExistsError): the rename would replace it by a regular file."""
    path = os.fspath(path)
    kind = special_kind(path)
    if kind:
        raise FileExistsError(errno.EEXIST, f"Not a regular file ({kind})", path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and _of_temporary(exc):  # told of the file the user named, not of ours
            raise OSError(exc.errno, exc.strerror, path) from None  # the errno's subclass (FileNotFoundError...)
        raise


def _of_temporary(exc: OSError) -> bool:
    """Whether `exc` is a system error about our temporary file, or about no file (a
    full disk); not one about another file, nor PIL's encoder errors (no errno)."""
    return exc.errno is not None and (exc.filename is None
                                      or os.path.basename(str(exc.filename)).startswith(_TEMP_PREFIX))


def images_in(folder) -> list:
    """The image files directly inside `folder` (by extension; hidden files skipped), sorted."""
    folder = os.fspath(folder)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
                  and os.path.isfile(os.path.join(folder, f)))
