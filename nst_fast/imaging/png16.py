"""16-bit RGB(A) PNG output (PIL writes RGB at 8 bits only): 65536 levels per channel
keep smooth gradients free of banding when the result is edited further."""
import struct
import zlib
from typing import Optional

import numpy as np
import torch

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SUB_FILTER = 1  # each byte minus the byte one pixel to its left


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode(image: torch.Tensor, text: Optional[dict] = None) -> bytes:
    """A (1, 3, H, W) or (3, H, W) tensor in [0, 1] -> the bytes of a 16-bit RGB PNG
    (4 channels: RGBA), with a tEXt chunk per entry of `text` (Latin-1)."""
    channels = image.shape[-3]
    arr = image.detach().float().clamp(0, 1).reshape(channels, *image.shape[-2:]).permute(1, 2, 0).cpu().numpy()
    height, width = arr.shape[:2]
    levels = np.ascontiguousarray(np.round(arr * 65535.0).astype(">u2"))
    pixel_bytes = 2 * channels
    raw = levels.view(np.uint8).reshape(height, width * pixel_bytes)
    rows = raw.copy()
    rows[:, pixel_bytes:] -= raw[:, :-pixel_bytes]  # uint8 arithmetic wraps, as the filter wants
    filtered = np.concatenate([np.full((height, 1), _SUB_FILTER, np.uint8), rows], axis=1)
    colour_type = 6 if channels == 4 else 2  # truecolour with alpha, truecolour
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)  # 16 bits, no interlace
    notes = b"".join(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace"))
                     for key, value in (text or {}).items())
    return (_SIGNATURE + _chunk(b"IHDR", header) + notes + _chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6))
            + _chunk(b"IEND", b""))
