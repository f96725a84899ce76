"""Spatial control: each style applies where its mask is (guided Gram matrices)."""
import pytest
import torch
from PIL import Image

from nst_fast import NstError, StyleTransfer
from nst_fast.app import cli
from nst_fast.imaging import images
from nst_fast.losses.gatys import style_scale
from nst_fast.optimize import memory
from nst_fast.optimize.options import DEFAULT_STYLE_LAYERS, Options
from nst_fast.optimize.targets import scale_loss


@pytest.fixture(scope="module")
def transfer():
    return StyleTransfer(weights="random", device="cpu")


def _half_masks(h, w):
    left = torch.zeros(1, 1, h, w)
    left[..., : w // 2] = 1.0
    return [left, 1.0 - left]


def _coloured_noise(rgb, seed, size=40):
    gen = torch.Generator().manual_seed(seed)
    texture = torch.rand(1, 1, size, size, generator=gen)
    return (0.2 + 0.8 * texture) * torch.tensor(rgb).view(1, 3, 1, 1)


def test_a_white_mask_is_the_unmasked_loss(transfer, small_images):
    content, style = small_images
    kw = dict(size=32, steps=2, init="noise", seed=1)
    seen = {}
    transfer.stylize_tensor(content, style, callback=lambda i: seen.setdefault("plain", i.losses), **kw)
    white = torch.ones(1, 1, 48, 64)
    transfer.stylize_tensor(content, style, style_masks=[white],
                            callback=lambda i: seen.setdefault("masked", i.losses), **kw)
    for name in DEFAULT_STYLE_LAYERS:
        plain, masked = float(seen["plain"][f"style:{name}"]), float(seen["masked"][f"style:{name}"])
        assert masked == pytest.approx(plain, rel=1e-5)


def test_guided_loss_matches_a_direct_computation(transfer, small_images):
    content, _ = small_images
    styles = [_coloured_noise([1.0, 0.1, 0.1], 0), _coloured_noise([0.1, 0.1, 1.0], 1)]
    opts = Options(size=32, style_blend=[0.7, 0.3]).resolve(n_styles=2)
    net = transfer.network(list(opts.content_layers) + list(opts.style_layers))
    c = images.resize_long_side(images.to_tensor(content), 32)
    h, w = c.shape[-2:]
    masks = _half_masks(h, w)
    loss = scale_loss(net, c, styles, opts, (h, w), 16, masks, transfer.devices)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(2))
    _, parts = loss(x)

    feats = net(x)
    for name in ("relu1_1", "relu3_1"):
        f = feats[name].double()
        want = 0.0
        for mask, style, blend in zip(masks, styles, [0.7, 0.3]):
            m = torch.nn.functional.interpolate(mask, size=f.shape[-2:], mode="area").double()
            positions = m.square().sum()
            g = (f * m).flatten(2) @ (f * m).flatten(2).transpose(1, 2)
            fs = net(images.resize_long_side(style, 32))[name].double().flatten(2)
            target = fs @ fs.transpose(1, 2) * (positions / fs.shape[-1])
            want += blend * style_scale(f.shape[1], float(positions)) * (g - target).square().sum()
        assert float(parts[f"style:{name}"]) == pytest.approx(float(want), rel=1e-4)


@pytest.mark.parametrize("style_loss,noise_size,seeds,size,margin,extra", [
    ("gram", 40, (3, 4), 48, 2, dict(style_weight=5e7)),
    ("w2", 64, (3, 3), 64, 4, {}),
    # MRF's default relu3_1 and relu4_1 of a random network carry too little colour
    # for 40 steps from gray; relu2_1 does.
    ("mrf", 64, (3, 3), 64, 4, dict(style_layers="relu2_1,relu3_1")),
])
@pytest.mark.slow
def test_masked_styles_paint_their_own_regions(transfer, small_images, style_loss, noise_size, seeds, size,
                                               margin, extra):
    content, _ = small_images
    red = _coloured_noise([1.0, 0.15, 0.1], seeds[0], noise_size)
    blue = _coloured_noise([0.1, 0.15, 1.0], seeds[1], noise_size)
    out = transfer.stylize_tensor(content, [red, blue], style_masks=_half_masks(48, 64), size=size, steps=40,
                                  init="gray", content_weight=0.0, style_loss=style_loss, **extra)

    def redness(part):
        return float(part[:, 0].mean() - part[:, 2].mean())

    w = out.shape[-1]
    left, right = out[..., : w // 2 - margin], out[..., w // 2 + margin:]
    assert redness(left) > 0.1 and redness(right) < -0.1, (redness(left), redness(right))


def test_mask_errors(transfer, small_images):
    content, style = small_images
    with pytest.raises(NstError, match="1 style masks given for 2 style images"):
        transfer.stylize_tensor(content, [style, style], style_masks=[torch.ones(1, 1, 4, 4)], size=32, steps=1)
    with pytest.raises(NstError, match="style mask 2 is black everywhere"):
        transfer.stylize_tensor(content, [style, style], style_masks=[torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)],
                                size=32, steps=1)
    with pytest.raises(NstError, match="one mask per style"):
        transfer.stylize_tensor(content, style, style_masks="mask.png", size=32, steps=1)


def test_checkpoint_is_tied_to_its_masks(transfer, small_images, tmp_path):
    content, style = small_images
    left, right = _half_masks(48, 64)
    ckpt = tmp_path / "run.ckpt"
    transfer.stylize_tensor(content, style, style_masks=[left], size=32, steps=2, checkpoint=ckpt)
    transfer.stylize_tensor(content, style, style_masks=[left], size=32, steps=3, resume=ckpt)
    with pytest.raises(NstError, match="from another run"):
        transfer.stylize_tensor(content, style, style_masks=[right], size=32, steps=3, resume=ckpt)


def test_memory_estimate_counts_masked_regions():
    args = (512, 512, ["relu4_2"], list(DEFAULT_STYLE_LAYERS))
    plain = memory.estimate_bytes(*args)
    two = memory.estimate_bytes(*args, style_regions=2)
    style_positions = sum(64 * 512 * 512 // 4**i for i in range(4)) + 512 * 32 * 32
    assert two - plain >= 2 * style_positions * 4


def test_cli_style_masks(tmp_path, small_images, capsys):
    content, style = small_images
    left = tmp_path / "left.png"
    Image.fromarray((_half_masks(48, 64)[0][0, 0].numpy() * 255).astype("uint8")).save(left)
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), str(style), "-o", str(out), "--weights", "random", "--device", "cpu",
                     "--size", "32", "--steps", "2", "-q", "--style-masks", f"{left},{left}"])
    assert code == 0, capsys.readouterr().err
    assert out.exists()
    code = cli.main([str(content), str(style), "-o", str(tmp_path / "bad.png"), "--weights", "random", "--device",
                     "cpu", "--size", "32", "--steps", "2", "-q", "--style-masks", str(tmp_path / "missing.png")])
    assert code != 0 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()
