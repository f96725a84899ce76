"""Image input and output: any common image mode in, RGB float tensors inside, atomic writes out."""
import contextlib
import hashlib
import io
import os
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from ..errors import NstError
from ..runtime.files import atomic_write
from . import png16, tiff16


def _rgb_or_rgba(img: Image.Image) -> Image.Image:
    """Any mode -> RGB, or RGBA where the image has transparency."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or 32-bit integer greyscale: the full range scaled down to 8 bits;
        # 32-bit float (a float TIFF): [0, 1] as image tools write it, else PIL's 0..255.
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if img.mode == "F":
            top = 1.0 if arr.max() <= 1.0 + 1e-3 else 255.0
        elif img.mode.startswith("I;16"):  # 16 bits by its mode, however dark
            top = 65535.0
        else:
            top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "La":  # premultiplied: PIL converts it to LA only
        img = img.convert("LA")
    if _may_be_transparent(img):
        img = img.convert("RGBA")
        if img.getextrema()[3][0] < 255:
            return img
    return img.convert("RGB")


def _may_be_transparent(img: Image.Image) -> bool:
    """Whether _rgb_or_rgba may keep an alpha channel of img: its mode has one, or it names a transparent colour."""
    return img.mode in ("P", "La", "LA", "PA", "RGBA", "RGBa") or "transparency" in img.info


def _to_rgb(img: Image.Image) -> Image.Image:
    img = _rgb_or_rgba(img)
    if img.mode == "RGBA":
        # Composite transparent areas over white rather than dropping alpha.
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


# Images up to this many pixels open (a 20000 x 13000 panorama: ~3 GB as float32).
# PIL's own limit (a warning above 89 million pixels, an error above 179 million)
# guards servers against decompression bombs, not a user's own photographs.
MAX_PIXELS = 1 << 28


@contextlib.contextmanager
def _pixel_limit(limit: int):
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit // 2  # PIL refuses twice its limit, and warns above it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


try:  # Pillow built without littlecms has no colour management
    from PIL import ImageCms

    _SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
except ImportError:
    ImageCms = None


def _to_srgb(img: Image.Image) -> Image.Image:
    """Pixels in the colour space of an embedded ICC profile (a phone's Display P3, a
    camera's Adobe RGB, a print CMYK) -> sRGB, the space the output is read in. Without
    a profile, or with one littlecms cannot use, the pixels stay as they are."""
    icc = img.info.get("icc_profile")
    if ImageCms is None or not icc or img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(img, source, _SRGB, outputMode="RGBA" if img.mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img


def open_image(path) -> Image.Image:
    """The image at `path`, upright, in sRGB: RGB, or RGBA where it has transparency."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise NstError(f"no such file: {path}")
    if os.path.isdir(path):
        raise NstError(f"{path} is a directory, not an image")
    try:
        with _pixel_limit(MAX_PIXELS), Image.open(path) as img:
            img.load()
            # Phones store portrait photos sideways with an EXIF orientation tag: upright them
            # (in place: no copy of an image that is upright already).
            ImageOps.exif_transpose(img, in_place=True)
            return _rgb_or_rgba(_to_srgb(img))
    except Image.DecompressionBombError:
        raise NstError(f"{path} has more than {MAX_PIXELS} pixels; scale it down first") from None
    except UnidentifiedImageError:
        raise NstError(f"{path} is not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise NstError(f"cannot read image {path}: {exc}") from None


# A result or a bicubic resize may overshoot [0, 1] a little: that is clamped.
RANGE_SLACK = 0.25


def _check_unit_range(kind: str, finite: bool, low: float, high: float) -> None:
    """Float pixels must be finite and in [0, 1], give or take RANGE_SLACK (0..255 and
    mean/std-normalised pixels are the usual mistakes)."""
    if not finite:
        raise NstError(f"the image {kind} holds NaN or infinite values")
    if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
        hint = " (normalised? undo the mean/std normalisation)" if low < -RANGE_SLACK else " (divide by 255)"
        raise NstError(f"a float image {kind} must hold values in [0, 1], got {low:g}..{high:g}{hint}")


def _tensor_pixels(image: torch.Tensor) -> torch.Tensor:
    """A tensor's pixels as float in [0, 1]: uint8 (as torchvision.io.read_image gives
    them) and uint16 scaled, bool as 0 / 1, floats checked."""
    if image.is_meta:
        raise NstError("an image tensor on the meta device holds no pixels")
    if image.dtype == torch.uint8:
        return image.detach().float() / 255.0
    if image.dtype == torch.uint16:
        return image.detach().float() / 65535.0
    if image.dtype == torch.bool:
        return image.detach().float()
    if not image.is_floating_point():
        raise NstError(f"an image tensor must be float in [0, 1], uint8 or uint16, got {image.dtype}")
    t = image.detach().float()
    if t.numel():
        _check_unit_range("tensor", bool(torch.isfinite(t).all()), t.min().item(), t.max().item())
    return t


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """A NumPy image as imageio, scikit-image or np.asarray(PIL image) give it:
    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) in RGB(A) order; uint8, uint16, bool, or
    float in [0, 1]. Quantised to 8 bits, as a decoded file would be."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape:
        raise NstError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        _check_unit_range("array", bool(np.isfinite(arr).all()), float(arr.min()), float(arr.max()))
        arr = (np.clip(arr, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise NstError(f"an image array must be uint8, uint16, bool or float, got {arr.dtype}")
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(arr), mode)


# A decoded image of more pixels than this (200 MB as float32 RGB) becomes float32 only
# reduced to what the run needs: a 225-megapixel scan, as a float32 image and its
# copies, took 9.5 GB for a 64-pixel output.
LARGE_PIXELS = 1 << 24
# A reduced image keeps this many times the long side it is resized to, for the
# antialiased resize that follows the box filter that reduces it: the two differ from
# one resize of the whole image by under 1 level of 255 on average and at most 4, in
# fine waves near the output's resolution (at 2 times, up to 9).
REDUCE_MARGIN = 4


def _reduced(img: Image.Image, long_side: Optional[int]) -> Image.Image:
    """A large decoded image reduced for a resize to long_side, in 8 bits (grey and RGB as
    they are, other modes once in RGB over white); others, and any for long_side None, as they are."""
    size = _reduced_size(img, long_side)
    if size is None:
        return img
    return (img if img.mode in ("L", "RGB") else _to_rgb(img)).resize(size, Image.Resampling.BOX)


def _reduced_size(img: Image.Image, long_side: Optional[int]):
    """(width, height) with a long side of REDUCE_MARGIN * long_side, or None where img is
    not over LARGE_PIXELS or not larger than that."""
    keep = REDUCE_MARGIN * (long_side or 0)
    if not keep or img.width * img.height <= LARGE_PIXELS or max(img.size) <= keep:
        return None
    scale = keep / max(img.size)
    return max(1, round(img.width * scale)), max(1, round(img.height * scale))


def decoded(image):
    """A path opened (open_image) and a NumPy image as a PIL image; PIL images and tensors as they are."""
    if isinstance(image, (str, os.PathLike)):
        return open_image(image)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    return image


def identity(image, tensor: torch.Tensor):
    """What a checkpoint's fingerprint holds of an image: the tensor a run made of it,
    or where that is reduced by the run's size (a large decoded image) a digest of the
    decoded pixels, the same at every size."""
    if not isinstance(image, Image.Image) or image.width * image.height <= LARGE_PIXELS:
        return tensor
    digest = hashlib.sha256(f"{image.mode} {image.size}".encode())
    rows = max(1, (1 << 20) // image.width)  # a band of about a million pixels at a time
    for top in range(0, image.height, rows):
        digest.update(image.crop((0, top, image.width, min(image.height, top + rows))).tobytes())
    return digest.digest()


def to_tensor(image, long_side: Optional[int] = None) -> torch.Tensor:
    """A path, PIL image, NumPy array (H, W[, 3 or 4], RGB order) or tensor ((3, H, W)
    or (1, 3, H, W): float in [0, 1], uint8 or uint16) -> float32 (1, 3, H, W) RGB in [0, 1].
    long_side: the largest long side the run resizes it to; an image of more than
    LARGE_PIXELS pixels is then reduced first, to REDUCE_MARGIN times that or more."""
    if isinstance(image, torch.Tensor):
        t = image.unsqueeze(0) if image.dim() == 3 else image
        if t.dim() != 4 or t.size(0) != 1 or t.size(1) not in (1, 3) or 0 in t.shape:
            raise NstError(f"an image tensor must be (3, H, W), (1, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        return _tensor_pixels(t).expand(1, 3, -1, -1).clamp(0, 1).cpu().contiguous()
    image = decoded(image)
    if not isinstance(image, Image.Image):
        raise NstError(f"expected an image path, PIL image, NumPy array or tensor, got {type(image).__name__}")
    arr = np.asarray(_to_rgb(_reduced(image, long_side)), dtype=np.float32)
    arr /= 255.0  # in place: one float32 copy of the image, not three
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


def alpha(image, long_side: Optional[int] = None) -> Optional[torch.Tensor]:
    """The transparency of an image path, PIL image or (H, W, 4) array: (1, 1, H, W) in
    [0, 1], 1 where opaque; None where it is opaque everywhere (and for tensors, which
    are RGB). long_side: as to_tensor's, reduced as to_tensor reduces the image."""
    image = decoded(image)
    if not isinstance(image, Image.Image) or not _may_be_transparent(image):
        return None
    img = _rgb_or_rgba(image)
    if img.mode != "RGBA":
        return None
    transparency = _reduced(img.getchannel("A"), long_side)
    return torch.from_numpy(np.asarray(transparency, dtype=np.float32) / 255.0)[None, None]


def with_alpha(image: torch.Tensor, transparency: Optional[torch.Tensor]) -> torch.Tensor:
    """A (1, 3, H, W) result with the content's transparency, resized to it, as a
    fourth channel: a cut-out photo stays cut out. None: the image unchanged."""
    if transparency is None:
        return image
    return torch.cat([image, resize_mask(transparency, image.shape[-2:]).to(image)], dim=1)


def to_mask(image, long_side: Optional[int] = None) -> torch.Tensor:
    """A path, PIL image, NumPy array or tensor ((H, W) too) -> float32 (1, 1, H, W) in
    [0, 1]: its grey level, white where a region is; transparent parts are not in it
    (a white shape on a transparent background covers the shape only). long_side: as
    to_tensor's."""
    if isinstance(image, torch.Tensor) and image.dim() == 2:
        image = image.unsqueeze(0)
    image = decoded(image)  # decoded once, for the grey level and the transparency
    grey = to_tensor(image, long_side).mean(dim=1, keepdim=True)  # transparent parts over white
    transparency = alpha(image, long_side)
    if transparency is None:
        return grey
    return (grey - (1 - transparency)).clamp(0, 1)  # over black instead: grey * alpha


def resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """A (1, 1, H, W) mask at `size` (height, width): area-averaged when shrinking."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    shrinking = size[0] < mask.shape[-2] and size[1] < mask.shape[-1]
    return F.interpolate(mask, size=tuple(size), mode="area" if shrinking else "bilinear").clamp(0, 1)


def resize_long_side(image: torch.Tensor, long_side: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = long_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=scale < 1).clamp(0, 1)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) -> an RGB image; (1, 4, H, W) (with_alpha) -> RGBA."""
    arr = image.detach().float().clamp(0, 1).squeeze(0).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8), "RGBA" if arr.shape[-1] == 4 else "RGB")


# PIL's JPEG default (quality 75, chroma at half resolution) blurs a painting's colour
# edges: at 95 and full-resolution chroma the mean error on the example style image
# falls from 11.5 to 2.9 levels.
_SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}
_ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
_IMAGE_DESCRIPTION = 270  # the TIFF / EXIF tag


def save_atomic(image, path, bits: int = 8, text: Optional[dict] = None) -> None:
    """Write a PIL image or a (1, 3 or 4, H, W) tensor in [0, 1] to a temporary file
    beside `path`, then rename: never half an image. bits=16: a 16-bit PNG or TIFF
    (tensors only). Transparency is kept in PNG, WebP and TIFF, dropped in the other formats.
    text: entries written into the file (PNG text chunks; a JPEG comment; TIFF's and
    WebP's ImageDescription)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise NstError(f"output directory does not exist: {directory}")
    ext = os.path.splitext(path)[1].lower()
    if bits == 16:
        encode = {".png": png16.encode, ".tif": tiff16.encode, ".tiff": tiff16.encode}.get(ext)
        if encode is None or not isinstance(image, torch.Tensor):
            raise NstError(f"16-bit output is written as PNG or TIFF from a tensor; {path} is neither")
        data = encode(image, text)
        atomic_write(path, lambda f: f.write(data), suffix=ext)
        return
    if bits != 8:
        raise NstError(f"output bits must be 8 or 16, got {bits!r}")
    if isinstance(image, torch.Tensor):
        image = to_pil(image)
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise NstError(f"unknown output image type {ext or '(no extension)'!r}; use .png, .jpg, .webp or .tif")
    if image.mode == "RGBA" and fmt not in _ALPHA_FORMATS:
        image = image.convert("RGB")
    options = dict(_SAVE_OPTIONS.get(fmt, {}))
    if text and fmt == "PNG":
        options["pnginfo"] = PngImagePlugin.PngInfo()
        for key, value in text.items():
            options["pnginfo"].add_text(key, value)
    elif text:
        description = "\n".join(f"{key}: {value}" for key, value in text.items())
        if fmt == "JPEG":
            options["comment"] = description
        elif fmt == "TIFF":  # as ImageDescription: a TIFF tag, or in WebP's EXIF
            options["tiffinfo"] = {_IMAGE_DESCRIPTION: description}
        elif fmt == "WEBP":
            exif = Image.Exif()
            exif[_IMAGE_DESCRIPTION] = description
            options["exif"] = exif.tobytes()
    atomic_write(path, lambda f: image.save(f, format=fmt, **options), suffix=ext)
