"""16-bit RGB(A) TIFF output (PIL writes RGB at 8 bits only), as photo editors and
print workflows take it: Deflate-compressed with horizontal differencing (Predictor 2),
little-endian, one strip."""
import struct
import zlib
from typing import Optional

import numpy as np
import torch

_SHORT, _LONG, _ASCII = 3, 4, 2
_DEFLATE, _RGB, _HORIZONTAL_DIFFERENCING, _UNASSOCIATED_ALPHA = 8, 2, 2, 2


def _entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")


def encode(image: torch.Tensor, text: Optional[dict] = None) -> bytes:
    """A (1, 3 or 4, H, W) or (3 or 4, H, W) tensor in [0, 1] -> the bytes of a 16-bit
    RGB(A) TIFF, with `text` as its ImageDescription ("key: value" lines, ASCII)."""
    channels = image.shape[-3]
    arr = image.detach().float().clamp(0, 1).reshape(channels, *image.shape[-2:]).permute(1, 2, 0).cpu().numpy()
    height, width = arr.shape[:2]
    levels = np.round(arr * 65535.0).astype("<u2")
    diffs = levels.copy()
    diffs[:, 1:] -= levels[:, :-1]  # uint16 arithmetic wraps, as the predictor wants
    strip = zlib.compress(diffs.tobytes(), 6)

    bits_at = 8 + len(strip) + len(strip) % 2  # after the strip, on a word boundary
    bits = struct.pack(f"<{channels}H", *[16] * channels)
    description = "\n".join(f"{k}: {v}" for k, v in (text or {}).items()).encode("ascii", "replace") + b"\0"
    description_at = bits_at + len(bits)
    ifd_at = description_at + len(description) + len(description) % 2
    entries = [
        _entry(256, _LONG, 1, struct.pack("<I", width)),
        _entry(257, _LONG, 1, struct.pack("<I", height)),
        _entry(258, _SHORT, channels, struct.pack("<I", bits_at)),
        _entry(259, _SHORT, 1, struct.pack("<H", _DEFLATE)),
        _entry(262, _SHORT, 1, struct.pack("<H", _RGB)),
        _entry(270, _ASCII, len(description), struct.pack("<I", description_at)),
        _entry(273, _LONG, 1, struct.pack("<I", 8)),
        _entry(277, _SHORT, 1, struct.pack("<H", channels)),
        _entry(278, _LONG, 1, struct.pack("<I", height)),
        _entry(279, _LONG, 1, struct.pack("<I", len(strip))),
        _entry(284, _SHORT, 1, struct.pack("<H", 1)),  # chunky: RGBRGB...
        _entry(317, _SHORT, 1, struct.pack("<H", _HORIZONTAL_DIFFERENCING)),
    ]
    if channels == 4:
        entries.append(_entry(338, _SHORT, 1, struct.pack("<H", _UNASSOCIATED_ALPHA)))
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"".join([b"II", struct.pack("<HI", 42, ifd_at), strip, b"\0" * (len(strip) % 2), bits, description,
                     b"\0" * (len(description) % 2), ifd])
