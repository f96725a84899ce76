"""Published weights (torchvision's): downloaded once into torch's cache, checked
against the hash their file name carries, and read without running code.

torch.hub's own loader trusts whatever file sits in the cache and unpickles it in
full; the README tells offline users to copy the file there by hand, so a file from
anywhere would run its code. Here the cached file must match its published hash, and
even then only tensors are read from it."""
import hashlib
import os
import re
import sys
import urllib.parse

import torch

from ..errors import WeightsUnavailable

# torchvision's file names end in the first hex digits of the file's SHA-256: vgg19-dcbb9e9d.pth.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")
_CHUNK = 1 << 20


def cache_file(url: str) -> str:
    """Where torch keeps its download of `url` ($TORCH_HOME/hub/checkpoints/NAME)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urllib.parse.urlparse(url).path))


def published_hash(url: str) -> str:
    found = _HASH_IN_NAME.search(os.path.basename(urllib.parse.urlparse(url).path))
    if not found:
        raise ValueError(f"{url} names no hash")
    return found.group(1)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, title: str) -> str:
    """The cached copy of `url`, downloaded first where there is none (whole or not at
    all: torch downloads to a temporary file, checks its hash, then renames it)."""
    path = cache_file(url)
    if os.path.exists(path):
        return path
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # 548 MB (VGG-19) on the first run: show the download where someone watches.
        torch.hub.download_url_to_file(url, path, hash_prefix=published_hash(url), progress=sys.stderr.isatty())
    except Exception as exc:
        raise WeightsUnavailable(
            f"cannot download torchvision's {title} weights ({type(exc).__name__}). Give weights PATH "
            f"(or set NST_FAST_WEIGHTS), a {title} state dict, or weights random for a smoke run"
        ) from None
    return path


def verified(url: str, title: str) -> str:
    """The cached copy of `url`, once its SHA-256 matches the hash its name publishes."""
    path = fetch(url, title)
    try:
        digest = sha256_of(path)
    except OSError as exc:
        raise WeightsUnavailable(f"cannot read the cached {title} weights {path}: {exc.strerror or exc}") from None
    expected = published_hash(url)
    if not digest.startswith(expected):
        raise WeightsUnavailable(
            f"the cached {title} weights {path} are damaged or not torchvision's (their SHA-256 does not "
            f"begin {expected}, as the published file's does): delete the file to download it again"
        )
    return path
