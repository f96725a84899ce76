"""Image input in every common mode, clear errors for bad files, atomic output."""
import os
import struct
import warnings

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

from nst_fast.errors import NstError
from nst_fast.imaging import images


def _rgb(seed=0, size=(20, 14)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_modes_are_converted_to_rgb(tmp_path, mode):
    base = _rgb()
    if mode == "I;16":
        arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(arr)
    else:
        img = base.convert(mode)
    ext = ".tif" if mode in ("CMYK", "I;16") else ".png"
    path = tmp_path / f"img{ext}"
    img.save(path)
    t = images.to_tensor(path)
    assert t.shape == (1, 3, 14, 20) and t.dtype == torch.float32
    assert 0 <= t.min() and t.max() <= 1 and t.std() > 0.05


def test_sixteen_bit_keeps_full_range(tmp_path):
    arr = np.linspace(0, 65535, 20 * 14).reshape(14, 20).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    t = images.to_tensor(tmp_path / "deep.png")
    assert t.max() > 0.99 and t.min() < 0.01


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert torch.allclose(images.to_tensor(img), torch.ones(1, 3, 4, 4))


def test_missing_file(tmp_path):
    with pytest.raises(NstError, match="no such file"):
        images.to_tensor(tmp_path / "absent.png")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text")
    with pytest.raises(NstError, match="not an image file"):
        images.to_tensor(path)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    _rgb(size=(64, 64)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NstError, match="cannot read image"):
        images.to_tensor(path)


def test_exif_orientation_is_applied(tmp_path):
    stored = _rgb(size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone writes a portrait photo
    stored.save(tmp_path / "portrait.png", exif=exif)
    upright = images.open_image(tmp_path / "portrait.png")
    assert upright.size == (20, 40)
    assert np.array_equal(np.asarray(upright), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))


def _linear_srgb_profile(cms) -> bytes:
    """sRGB's primaries with linear tone curves (gamma 1), made from littlecms's own
    sRGB profile by rewriting its shared TRC tag."""
    icc = bytearray(cms.ImageCmsProfile(cms.createProfile("sRGB")).tobytes())
    icc[84:100] = bytes(16)  # no profile ID: the bytes change
    for i in range(struct.unpack(">I", icc[128:132])[0]):
        tag, offset, size = struct.unpack(">4sII", icc[132 + 12 * i:144 + 12 * i])
        if tag == b"rTRC":  # gTRC and bTRC point at the same curve
            curve = b"para" + bytes(4) + struct.pack(">HH", 0, 0) + struct.pack(">i", 1 << 16)  # y = x^1.0
            icc[offset:offset + size] = curve.ljust(size, b"\0")
    return bytes(icc)


def test_icc_profile_is_converted_to_srgb(tmp_path):
    cms = pytest.importorskip("PIL.ImageCms")
    grey = Image.new("RGB", (8, 8), (128, 128, 128))
    grey.save(tmp_path / "linear.png", icc_profile=_linear_srgb_profile(cms))
    linear = 128 / 255
    want = 255 * (1.055 * linear ** (1 / 2.4) - 0.055)  # the sRGB encoding of that linear light: ~188
    got = np.asarray(images.open_image(tmp_path / "linear.png"), dtype=np.float32)
    assert np.abs(got - want).max() <= 2, (got[0, 0], want)
    srgb = cms.ImageCmsProfile(cms.createProfile("sRGB")).tobytes()
    photo = _rgb(size=(16, 12))
    photo.save(tmp_path / "srgb.png", icc_profile=srgb)
    photo.save(tmp_path / "broken.png", icc_profile=b"not a profile")
    for name in ("srgb.png", "broken.png"):  # already sRGB / unusable: the pixels as stored
        stored = np.asarray(photo, dtype=np.int16)
        assert np.abs(np.asarray(images.open_image(tmp_path / name), dtype=np.int16) - stored).max() <= 1


def test_large_images_open_up_to_our_limit_not_pils(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("RGB", (40, 30)).save(path)  # 1200 pixels
    pil_limit = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL alone would refuse it (over 2 x 500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor warn about it
        assert images.open_image(path).size == (40, 30)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(NstError, match="more than 1000 pixels; scale it down"):
        images.open_image(path)
    assert Image.MAX_IMAGE_PIXELS == 500  # PIL's setting is left as it was
    monkeypatch.undo()
    assert Image.MAX_IMAGE_PIXELS == pil_limit


def test_a_large_image_becomes_a_tensor_reduced_to_what_the_run_needs(monkeypatch):
    """Over LARGE_PIXELS (made small here), an image becomes float32 only reduced in its own
    8 bits to REDUCE_MARGIN times the run's long side or more: what the run resizes it to
    differs from a full-size float32 image's by little. Smaller images stay as they are."""
    yy, xx = np.mgrid[0:300, 0:400]
    waves = 127.5 + 127 * np.sin(xx / 9) * np.cos(yy / 7)
    photo = Image.fromarray(np.stack([xx * 255 // 399, yy * 255 // 299, waves], -1).astype(np.uint8))
    full = images.to_tensor(photo)
    monkeypatch.setattr(images, "LARGE_PIXELS", 400 * 300 - 1)
    reduced = images.to_tensor(photo, long_side=32)
    assert reduced.shape == (1, 3, 96, 128)  # 4 x 32 pixels across
    assert torch.equal(images.to_tensor(photo), full)  # no long side: no reduction
    assert torch.equal(images.to_tensor(photo, long_side=100), full)  # 4 x 100 is all it has
    close = images.resize_long_side(reduced, 32) - images.resize_long_side(full, 32)
    assert close.abs().max() < 5 / 255 and close.abs().mean() < 1 / 255, (close.abs().max(), close.abs().mean())
    grey = photo.convert("L")
    assert torch.equal(images.to_tensor(grey, 32), images.to_tensor(grey.convert("RGB"), 32))
    see_through = photo.convert("RGBA")
    see_through.putalpha(Image.fromarray((xx % 2 * 255).astype(np.uint8)))
    assert images.alpha(see_through, 32).shape == images.to_mask(see_through, 32).shape == (1, 1, 96, 128)
    assert images.alpha(see_through, 32).mean().item() == pytest.approx(0.5, abs=0.01)
    # What a checkpoint identifies it by is its decoded pixels, the same at every size.
    assert images.identity(photo, reduced) == images.identity(photo, full) != images.identity(grey, full)
    monkeypatch.setattr(images, "LARGE_PIXELS", 400 * 300)
    assert torch.equal(images.to_tensor(photo, long_side=32), full) and images.identity(photo, full) is full


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(NstError, match="directory"):
        images.to_tensor(tmp_path)


def test_tensor_inputs():
    t = torch.rand(3, 5, 6)
    assert images.to_tensor(t).shape == (1, 3, 5, 6)
    with pytest.raises(NstError, match="must be"):
        images.to_tensor(torch.rand(2, 3, 5, 6))
    with pytest.raises(NstError, match="NaN"):
        images.to_tensor(torch.full((3, 4, 4), float("nan")))


def test_numpy_inputs_match_their_pil_image():
    pil = _rgb()
    expected = images.to_tensor(pil)
    rgb = np.asarray(pil)
    assert torch.equal(images.to_tensor(rgb), expected)
    assert torch.equal(images.to_tensor(rgb.astype(np.float64) / 255.0), expected)
    assert torch.equal(images.to_tensor(rgb.astype(np.uint16) * 257), expected)
    grey = rgb[:, :, 0]
    assert torch.equal(images.to_tensor(grey), images.to_tensor(Image.fromarray(grey, "L")))
    assert torch.equal(images.to_tensor(grey[:, :, None]), images.to_tensor(grey))
    cut, a = _cut_out()
    rgba = np.asarray(cut)
    assert torch.equal(images.to_tensor(rgba), images.to_tensor(cut))  # composited over white
    assert np.array_equal((images.alpha(rgba)[0, 0].numpy() * 255).round().astype(np.uint8), a)
    assert images.alpha(rgb) is None


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 5, 2), np.uint8), "must be .H, W., .H, W, 3. or .H, W, 4., got shape"),
        (np.zeros((0, 5, 3), np.uint8), "got shape"),
        (np.full((4, 5, 3), 255.0), "values in \\[0, 1\\], got 255..255 \\(divide by 255\\)"),
        (np.full((4, 5, 3), -0.5), "values in \\[0, 1\\], got -0.5..-0.5 \\(normalised\\? undo the mean/std"),
        (np.full((4, 5, 3), np.nan), "NaN"),
        (np.zeros((4, 5, 3), np.int64), "uint8, uint16, bool or float, got int64"),
    ],
)
def test_bad_numpy_inputs(array, message):
    with pytest.raises(NstError, match=message):
        images.to_tensor(array)


def test_resize_long_side():
    t = torch.rand(1, 3, 30, 60)
    assert images.resize_long_side(t, 20).shape[-2:] == (10, 20)


def test_save_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "out.png"
    images.save_atomic(_rgb(), out)
    assert Image.open(out).size == (20, 14)

    def broken_save(self, fp, format=None, **kw):
        fp.write(b"half an ima")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    target = tmp_path / "second.png"
    with pytest.raises(OSError):
        images.save_atomic(_rgb(), target)
    assert not target.exists()
    assert os.listdir(tmp_path) == ["out.png"]


def test_save_atomic_gives_ordinary_permissions(tmp_path):
    """A new output gets 0o666 less the umask, as open() would give it (the temporary
    file it is renamed from is made 0o600); a rewritten one keeps its permissions."""
    old = os.umask(0o022)
    try:
        images.save_atomic(_rgb(), tmp_path / "new.png")
        assert os.stat(tmp_path / "new.png").st_mode & 0o777 == 0o644
        os.umask(0o002)
        images.save_atomic(_rgb(), tmp_path / "group.png")
        assert os.stat(tmp_path / "group.png").st_mode & 0o777 == 0o664
        os.chmod(tmp_path / "new.png", 0o640)
        images.save_atomic(_rgb(1), tmp_path / "new.png")
        assert os.stat(tmp_path / "new.png").st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_jpeg_output_keeps_colour_detail(tmp_path):
    """Quality 95 with full-resolution chroma: PIL's default (75, 4:2:0) is ~4x further off."""
    painting = Image.open(EXAMPLES / "style.png").convert("RGB")
    images.save_atomic(painting, tmp_path / "out.jpg")
    error = np.abs(np.asarray(Image.open(tmp_path / "out.jpg"), dtype=np.float32)
                   - np.asarray(painting, dtype=np.float32)).mean()
    assert error < 4.0, error


def test_save_atomic_rejects_unknown_extension(tmp_path):
    with pytest.raises(NstError, match="unknown output image type"):
        images.save_atomic(_rgb(), tmp_path / "out.xyz")


def _read_png16(path):
    """Decode a 16-bit RGB(A) PNG written with the Sub filter, independently of the writer."""
    import struct
    import zlib

    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(tag + body)
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 16 and colour in (2, 6)
    channels = 4 if colour == 6 else 3
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + width * 2 * channels)
    assert (rows[:, 0] == 1).all()
    raw = rows[:, 1:].astype(np.int64)
    for i in range(2 * channels, raw.shape[1]):
        raw[:, i] = (raw[:, i] + raw[:, i - 2 * channels]) % 256
    return (raw[:, 0::2] * 256 + raw[:, 1::2]).reshape(height, width, channels)


def _read_tiff16(path):
    """Decode the 16-bit TIFF layout the writer uses (little-endian, one Deflate strip,
    horizontal differencing), independently of it -> (levels, {tag: value})."""
    import struct
    import zlib

    data = open(path, "rb").read()
    assert data[:4] == b"II*\0"
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd:ifd + 2])
    tags = {}
    for i in range(count):
        tag, kind, n, raw = struct.unpack("<HHI4s", data[ifd + 2 + 12 * i:ifd + 14 + 12 * i])
        size = {2: 1, 3: 2, 4: 4}[kind] * n
        body = raw[:size] if size <= 4 else data[struct.unpack("<I", raw)[0]:][:size]
        fmt = f"<{n}{'H' if kind == 3 else 'I'}"
        tags[tag] = body.rstrip(b"\0").decode() if kind == 2 else struct.unpack(fmt, body)
    width, height, channels = tags[256][0], tags[257][0], tags[277][0]
    assert tags[258] == (16,) * channels and tags[259] == (8,) and tags[317] == (2,) and tags[262] == (2,)
    strip = data[tags[273][0]:tags[273][0] + tags[279][0]]
    diffs = np.frombuffer(zlib.decompress(strip), "<u2").reshape(height, width, channels).astype(np.int64)
    return np.cumsum(diffs, axis=1) % 65536, tags


@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_tiff_output(tmp_path, channels):
    image = torch.rand(1, channels, 7, 11, generator=torch.Generator().manual_seed(1))
    image[0, :3, 0, 0] = torch.tensor([0.0, 1.0, 0.5])
    path = tmp_path / "out.tif"
    images.save_atomic(image, path, bits=16, text={"Comment": "nst-fast settings: {}"})
    levels, tags = _read_tiff16(path)
    want = (image[0].permute(1, 2, 0).numpy() * 65535).round().astype(np.int64)
    assert np.array_equal(levels, want)
    assert tags[270] == "Comment: nst-fast settings: {}" and (tags.get(338) == (2,)) == (channels == 4)
    with Image.open(path) as img:  # libtiff (through PIL) decodes it too, to 8 bits
        assert img.size == (11, 7) and img.mode == ("RGBA" if channels == 4 else "RGB")
        assert np.abs(np.asarray(img).astype(np.int64) - want / 257).max() <= 1


def test_sixteen_bit_png_output(tmp_path):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 7, 11, generator=gen)
    image[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.5])
    path = tmp_path / "out.png"
    images.save_atomic(image, path, bits=16)
    levels = _read_png16(path)
    want = (image[0].permute(1, 2, 0).numpy() * 65535).round().astype(np.int64)
    assert np.array_equal(levels, want)
    with Image.open(path) as img:  # other readers see a valid PNG (PIL keeps the high bytes)
        assert img.size == (11, 7)
        assert np.array_equal(np.asarray(img.convert("RGB")), (want >> 8).astype(np.uint8))
    with pytest.raises(NstError, match="16-bit output is written as PNG"):
        images.save_atomic(image, tmp_path / "out.jpg", bits=16)
    with pytest.raises(NstError, match="bits must be 8 or 16"):
        images.save_atomic(image, tmp_path / "x.png", bits=12)


def _cut_out(size=(20, 14)):
    """An RGBA photo whose left half is transparent, with a half-transparent column."""
    img = _rgb(size=size).convert("RGBA")
    a = np.full((size[1], size[0]), 255, np.uint8)
    a[:, : size[0] // 2] = 0
    a[:, size[0] // 2] = 128
    img.putalpha(Image.fromarray(a))
    return img, a


def test_transparency_is_read_where_an_image_has_some(tmp_path):
    img, a = _cut_out()
    img.save(tmp_path / "cut.png")
    got = images.alpha(tmp_path / "cut.png")
    assert got.shape == (1, 1, 14, 20)
    assert np.array_equal((got[0, 0].numpy() * 255).round().astype(np.uint8), a)
    assert images.to_tensor(tmp_path / "cut.png").shape == (1, 3, 14, 20)  # the photo itself stays RGB
    assert images.alpha(_rgb().convert("RGBA")) is None  # opaque everywhere: nothing to keep
    assert images.alpha(_rgb()) is None and images.alpha(torch.rand(1, 3, 4, 4)) is None
    palette = _rgb().convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    assert images.alpha(palette).min() == 0


def test_results_keep_the_transparency_in_formats_that_hold_it(tmp_path):
    img, a = _cut_out()
    result = images.with_alpha(torch.rand(1, 3, 7, 10), images.alpha(img))  # half size: area-averaged
    assert result.shape == (1, 4, 7, 10)
    assert (result[0, 3, :, :4] == 0).all() and (result[0, 3, :, 6:] == 1).all()
    images.save_atomic(result, tmp_path / "out.png")
    images.save_atomic(result, tmp_path / "out.webp")
    images.save_atomic(result, tmp_path / "out.jpg")
    for name, mode in (("out.png", "RGBA"), ("out.webp", "RGBA"), ("out.jpg", "RGB")):
        with Image.open(tmp_path / name) as saved:
            assert saved.mode == mode, name
    with Image.open(tmp_path / "out.png") as saved:
        want = (result[0, 3].numpy() * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(np.asarray(saved.getchannel("A")), want)
    images.save_atomic(result, tmp_path / "deep.png", bits=16)
    levels = _read_png16(tmp_path / "deep.png")
    assert levels.shape == (7, 10, 4)
    assert np.array_equal(levels, (result[0].permute(1, 2, 0).numpy() * 65535).round().astype(np.int64))


def test_tensor_inputs_by_dtype():
    pixels = torch.randint(0, 256, (3, 6, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = pixels.float().unsqueeze(0) / 255.0
    assert torch.equal(images.to_tensor(pixels), expected)  # as torchvision.io.read_image gives them
    assert torch.allclose(images.to_tensor(pixels.to(torch.int32).mul(257).to(torch.uint16)), expected)
    assert torch.equal(images.to_tensor(pixels > 127), (pixels > 127).float().unsqueeze(0))
    overshoot = expected * 1.1 - 0.05  # a bicubic resize's ringing: clamped
    assert torch.equal(images.to_tensor(overshoot), overshoot.clamp(0, 1))


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.full((3, 4, 5), 255.0), "values in \\[0, 1\\], got 255..255 \\(divide by 255\\)"),
        (torch.full((3, 4, 5), -2.0), "values in \\[0, 1\\], got -2..-2 \\(normalised\\?"),  # mean/std-normalised
        ((torch.rand(3, 4, 5) - 0.45) / 0.22, "\\(normalised\\? undo the mean/std normalisation\\)$"),
        (torch.zeros(3, 4, 5, device="meta"), "an image tensor on the meta device holds no pixels"),
        (torch.zeros(3, 4, 5, dtype=torch.int64), "float in \\[0, 1\\], uint8 or uint16, got torch.int64"),
        (torch.zeros(3, 4, 5, dtype=torch.complex64), "got torch.complex64"),
        (torch.rand(3, 0, 5), "got \\(3, 0, 5\\)"),
        (torch.full((3, 4, 5), float("nan")), "NaN"),
    ],
)
def test_bad_tensor_inputs(tensor, message):
    with pytest.raises(NstError, match=message):
        images.to_tensor(tensor)


def test_arrays_and_tensors_share_the_overshoot_they_forgive():
    ringing = np.linspace(-0.05, 1.05, 4 * 5 * 3).reshape(4, 5, 3)  # a bicubic resize's: clamped for both
    assert torch.allclose(images.to_tensor(ringing), images.to_tensor(torch.from_numpy(ringing).permute(2, 0, 1)),
                          atol=1 / 255)


def test_a_dark_16_bit_image_stays_dark_and_premultiplied_la_opens():
    dark = Image.new("I;16", (5, 4), 200)  # 200 of 65535: near black
    assert images.to_tensor(dark).max() <= 1 / 255
    la = Image.new("LA", (5, 4), (100, 128)).convert("La")
    assert images.to_tensor(la).shape == (1, 3, 4, 5) and images.alpha(la) is not None


def test_float_tiff_in_unit_range(tmp_path):
    values = np.linspace(0, 1, 6 * 8, dtype=np.float32).reshape(6, 8)
    Image.fromarray(values, "F").save(tmp_path / "float.tif")
    got = images.to_tensor(tmp_path / "float.tif")
    assert got.shape == (1, 3, 6, 8)
    assert torch.allclose(got[0, 0], torch.from_numpy(values), atol=0.5 / 255 + 1e-6)


def test_masks_from_transparency_and_plain_tensors():
    shape = np.zeros((6, 8, 4), np.uint8)
    shape[:, :4] = 255  # a white shape on the left, transparent on the right
    mask = images.to_mask(shape)
    assert mask.shape == (1, 1, 6, 8)
    assert (mask[..., :4] == 1).all() and (mask[..., 4:] == 0).all()
    half = np.full((6, 8, 4), 255, np.uint8)
    half[..., 3] = 128  # white at half opacity: half in
    assert torch.allclose(images.to_mask(Image.fromarray(half, "RGBA")), torch.full((1, 1, 6, 8), 128 / 255))
    plain = torch.zeros(6, 8)
    plain[:, :4] = 1
    assert torch.equal(images.to_mask(plain), mask)  # an (H, W) tensor, as a NumPy mask may be
    assert torch.equal(images.to_mask(plain > 0.5), mask)
