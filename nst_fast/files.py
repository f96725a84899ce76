"""Files: atomic writes (a temporary file beside the target, then a rename) and the
images a folder holds."""
import os
import tempfile

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _new_file_mode(path) -> int:
    """The permissions `path` would get from open(): its own where it exists (a rewrite
    keeps them), else 0o666 less the umask. mkstemp makes its file 0o600."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path, write, suffix=""):
    """Call write(binary_file) on a temporary file and rename it to `path`: the file
    at `path` is then whole or absent, never half written, even after a power cut
    (the data reach the disk before the rename)."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".nst_fast-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def images_in(folder) -> list:
    """The image files directly inside `folder` (by extension; hidden files skipped), sorted."""
    folder = os.fspath(folder)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
                  and os.path.isfile(os.path.join(folder, f)))
