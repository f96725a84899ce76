"""The Wasserstein-2 and MRF style losses, against direct float64 computations."""
import pytest
import torch

from nst_fast import NstError, StyleTransfer
from nst_fast.app import cli
from nst_fast.losses import mrf, wasserstein
from nst_fast.optimize import memory
from nst_fast.optimize.options import DEFAULT_STYLE_LAYERS, MRF_STYLE_LAYERS, Options


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _spd(c, seed):
    a = _rand(c, 3 * c, seed=seed) - 0.5
    return a @ a.T / (3 * c) + 0.05 * torch.eye(c, dtype=torch.float64)


@pytest.fixture(scope="module")
def transfer():
    return StyleTransfer(weights="random", device="cpu")


# --- Wasserstein-2 -------------------------------------------------------------------------


def test_trace_sqrt_value_and_gradient():
    a = _spd(7, 0)
    want = torch.linalg.eigvalsh(a).sqrt().sum()
    assert float(wasserstein.trace_sqrt(a)) == pytest.approx(float(want), rel=1e-12)
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: wasserstein.trace_sqrt(0.5 * (m + m.T)), (a,))


def test_trace_sqrt_gradient_with_repeated_eigenvalues():
    """Where autograd through eigh divides by zero gaps, the spectral gradient stays finite."""
    q, _ = torch.linalg.qr(_rand(5, 5, seed=1))
    a = (q * torch.tensor([1.0, 1.0, 1.0, 4.0, 4.0], dtype=torch.float64)) @ q.T
    a.requires_grad_(True)
    wasserstein.trace_sqrt(a).backward()
    want = (q * (0.5 / torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64))) @ q.T
    assert torch.allclose(a.grad, want, atol=1e-12)


def _w2_direct(f, s):
    """Squared W2 per channel between Gaussians fitted to (1, C, H, W) features, with the
    same ridge, using tr (A^1/2 B A^1/2)^1/2 = sum sqrt(eig(A B)) (no matrix square root)."""
    f, s = f[0].flatten(1), s[0].flatten(1)
    mf, ms = f.mean(1), s.mean(1)
    cf = (f - mf[:, None]) @ (f - mf[:, None]).T / f.shape[1]
    cs = (s - ms[:, None]) @ (s - ms[:, None]).T / s.shape[1]
    ridge = wasserstein.EPS * cs.diagonal().mean() * torch.eye(len(mf), dtype=f.dtype)
    cf, cs = cf + ridge, cs + ridge
    cross = torch.linalg.eigvals(cs @ cf).real.clamp_min(0).sqrt().sum()
    return float(((mf - ms).square().sum() + cf.trace() + cs.trace() - 2 * cross) / len(mf))


def test_w2_loss_matches_a_direct_computation():
    f, s = _rand(1, 6, 9, 11, seed=2), 2 * _rand(1, 6, 7, 8, seed=3)
    loss = wasserstein.WassersteinStyle(wasserstein.moments(s))
    assert float(loss(f)) == pytest.approx(_w2_direct(f, s), rel=1e-6)


@pytest.mark.slow
def test_w2_loss_is_zero_at_the_style_and_its_gradient_checks():
    s = _rand(1, 5, 6, 7, seed=4)
    loss = wasserstein.WassersteinStyle(wasserstein.moments(s))
    assert abs(float(loss(s))) < 1e-10
    f = _rand(1, 5, 6, 7, seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (f,))


def test_w2_of_a_shift_is_the_squared_mean_difference():
    f = _rand(1, 4, 8, 8, seed=6)
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64).view(1, 4, 1, 1)
    loss = wasserstein.WassersteinStyle(wasserstein.moments(f + shift))
    assert float(loss(f)) == pytest.approx(float(shift.square().sum() / 4), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["relu1_1", "relu5_1"])
def test_w2_float32_features_match_float64(transfer, layer):
    """Near the style the loss is a small difference of large traces: float32 features
    must still give the float64 loss and gradient (the C x C algebra runs in float64)."""
    net = transfer.network([layer])
    content, style = (_rand(1, 3, 128, 96, seed=seed, dtype=torch.float32) for seed in (16, 17))
    target = net(style)[layer]
    loss = wasserstein.WassersteinStyle(wasserstein.moments(target))
    for x in (net(content)[layer].detach(), 1.01 * target.detach()):
        x32, x64 = x.clone().requires_grad_(True), x.double().requires_grad_(True)
        l32, l64 = loss(x32), loss(x64)
        l32.backward()
        l64.backward()
        assert float(l32.detach()) == pytest.approx(float(l64.detach()), rel=1e-4)
        assert (x32.grad.double() - x64.grad).norm() <= 1e-3 * x64.grad.norm()


@pytest.mark.slow
def test_guided_w2_weights_positions_by_the_squared_mask():
    f, s = _rand(1, 4, 6, 8, seed=18), _rand(1, 4, 5, 5, seed=19)
    left = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    left[..., :4] = 1.0
    only_left = wasserstein.WassersteinStyle(wasserstein.moments(s), left)
    assert float(only_left(f)) == pytest.approx(_w2_direct(f[..., :4], s), rel=1e-6)
    # mask^2 of 1 on the left and 1/2 on the right weighs as the left half twice over.
    graded = wasserstein.WassersteinStyle(wasserstein.moments(s), left + (1 - left) * 0.5 ** 0.5)
    repeated = torch.cat([f[..., :4], f[..., :4], f[..., 4:]], dim=-1)
    assert float(graded(f)) == pytest.approx(_w2_direct(repeated, s), rel=1e-6)
    f = f.requires_grad_(True)
    assert torch.autograd.gradcheck(graded, (f,))


def test_blended_moments_are_the_moments_of_the_mixture():
    a, b = _rand(1, 3, 6, 6, seed=7), _rand(1, 3, 6, 6, seed=8) + 1
    mixed = wasserstein.blend([wasserstein.moments(a), wasserstein.moments(b)], [0.5, 0.5])
    both = wasserstein.moments(torch.cat([a, b], dim=-1))
    assert torch.allclose(mixed.mean, both.mean) and torch.allclose(mixed.second, both.second)


# --- MRF ------------------------------------------------------------------------------------


def test_nearest_patch_search_is_exact_in_any_chunk_size(monkeypatch):
    queries, keys = _rand(50, 12, seed=9) - 0.5, _rand(37, 12, seed=10) - 0.5
    unit = keys / keys.norm(dim=1, keepdim=True)
    want = (queries / queries.norm(dim=1, keepdim=True) @ unit.T).argmax(1)
    for chunk in (4 * 37 * 3, 4 * 37 * 50, 1):  # 3 rows at a time, all at once, one row
        monkeypatch.setattr(mrf, "SEARCH_CHUNK_BYTES", chunk)
        assert torch.equal(mrf.nearest(queries, unit), want)


def _mrf_direct(f, styles, weights, patch=3, stride=2):
    """Li and Wand's loss, patch by patch in float64."""
    def all_patches(x):
        _, c, h, w = x.shape
        return [x[0, :, i:i + patch, j:j + patch].reshape(-1)
                for i in range(0, h - patch + 1, stride) for j in range(0, w - patch + 1, stride)]
    total = 0.0
    ps = all_patches(f)
    for s, weight in zip(styles, weights):
        targets = [t for v in (s if isinstance(s, list) else [s]) for t in all_patches(v)]  # variants pool
        err = 0.0
        for p in ps:
            best = max(targets, key=lambda t: float(p @ t / (t.norm())))
            err += float((p - best).square().sum())
        total += weight * err / (len(ps) * ps[0].numel())
    return total


def test_mrf_loss_matches_a_direct_computation():
    f = _rand(1, 4, 9, 10, seed=11)
    styles = [_rand(1, 4, 8, 9, seed=12), _rand(1, 4, 7, 7, seed=13) * 2]
    loss = mrf.MRFStyle(styles, [0.25, 0.75])
    assert float(loss(f)) == pytest.approx(_mrf_direct(f, styles, [0.25, 0.75]), rel=1e-10)


def test_mrf_loss_is_zero_at_the_style_and_its_gradient_checks():
    s = _rand(1, 3, 7, 7, seed=14)
    loss = mrf.MRFStyle([s], [1.0])
    assert float(loss(s)) == 0.0
    f = _rand(1, 3, 7, 7, seed=15).requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (f,))


def test_guided_mrf_covers_only_its_region():
    f = _rand(1, 3, 9, 9, seed=21)
    s = _rand(1, 3, 7, 7, seed=22)
    mask = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    mask[..., :5] = 1.0  # patch centres at columns 1 and 3 (of 1, 3, 5, 7)
    guided = mrf.MRFStyle([s], [1.0], masks=[mask])
    assert float(guided(f)) == pytest.approx(_mrf_direct(f[..., :5], [s], [1.0]), rel=1e-10)
    soft = mask * 0.25
    assert float(mrf.MRFStyle([s], [1.0], masks=[soft])(f)) == pytest.approx(float(guided(f)), rel=1e-12)
    f = f.requires_grad_(True)
    assert torch.autograd.gradcheck(guided, (f,))
    empty = mrf.MRFStyle([s], [1.0], masks=[torch.zeros_like(mask)])
    assert float(empty(f)) == 0.0


def test_patches_refuse_features_smaller_than_a_patch():
    with pytest.raises(ValueError, match="no 3x3 patch"):
        mrf.patches(torch.zeros(1, 2, 2, 5))


# --- In the loop ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("style_loss", ["w2", "mrf"])
def test_a_run_lowers_the_style_loss(transfer, small_images, style_loss):
    content, style = small_images
    seen = []
    transfer.stylize_tensor(content, style, size=48, steps=15, style_loss=style_loss,
                            callback=lambda i: seen.append({k: float(v) for k, v in i.losses.items()}))
    names = DEFAULT_STYLE_LAYERS if style_loss == "w2" else MRF_STYLE_LAYERS
    assert set(f"style:{n}" for n in names) <= set(seen[0])
    assert seen[-1]["style"] < 0.9 * seen[0]["style"], (seen[0]["style"], seen[-1]["style"])
    assert seen[-1]["total"] < seen[0]["total"]


def test_defaults_depend_on_the_style_loss():
    assert Options(style_loss="mrf").resolve().style_layers == MRF_STYLE_LAYERS
    assert Options(style_loss="w2").resolve().style_layers == {n: 0.2 for n in DEFAULT_STYLE_LAYERS}
    w2 = Options(style_loss="w2")
    assert w2.resolve(convention="caffe").style_weight == Options(style_loss="w2").resolve().style_weight
    assert Options().resolve(convention="caffe").style_weight != Options().resolve().style_weight


@pytest.mark.slow
@pytest.mark.parametrize("style_loss", ["w2", "mrf"])
def test_a_white_mask_is_the_unmasked_loss(transfer, small_images, style_loss):
    content, style = small_images
    kw = dict(size=48, steps=2, init="noise", seed=1, style_loss=style_loss)
    seen = {}
    transfer.stylize_tensor(content, style, callback=lambda i: seen.setdefault("plain", i.losses), **kw)
    transfer.stylize_tensor(content, style, style_masks=[torch.ones(1, 1, 48, 64)],
                            callback=lambda i: seen.setdefault("masked", i.losses), **kw)
    assert float(seen["masked"]["style"]) == pytest.approx(float(seen["plain"]["style"]), rel=1e-5)


@pytest.mark.slow
def test_option_errors(transfer, small_images):
    content, style = small_images
    with pytest.raises(NstError, match="style_loss must be one of gram, w2, mrf"):
        Options(style_loss="lap").resolve()
    with pytest.raises(NstError, match="MRF style loss needs 3x3 patches"):
        transfer.stylize_tensor(content, style, size=32, steps=1, style_loss="mrf", style_layers="relu5_1")


def test_checkpoint_is_tied_to_the_style_loss(transfer, small_images, tmp_path):
    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    transfer.stylize_tensor(content, style, size=32, steps=2, checkpoint=ckpt)
    with pytest.raises(NstError, match="from another run"):
        transfer.stylize_tensor(content, style, size=32, steps=3, resume=ckpt, style_loss="w2")


def test_memory_estimate_counts_the_style_losses():
    kw = dict(content_layers=["relu4_2"], device="cpu")
    gram = memory.estimate_parts(512, 512, style_layers=list(MRF_STYLE_LAYERS), **kw)
    one = memory.estimate_parts(512, 512, style_layers=list(MRF_STYLE_LAYERS), style_loss="mrf", **kw)
    two = memory.estimate_parts(512, 512, style_layers=list(MRF_STYLE_LAYERS), style_loss="mrf", styles=2, **kw)
    w2 = memory.estimate_parts(512, 512, style_layers=list(DEFAULT_STYLE_LAYERS), style_loss="w2", **kw)
    assert gram["style_loss"] == 0 < w2["style_loss"] < one["style_loss"] < two["style_loss"]
    patches_3_1 = 63 * 63 * 256 * 9 * 4  # relu3_1 at 512 px: 128x128, 3x3 patches at stride 2
    assert one["style_loss"] > 4 * patches_3_1
    with pytest.raises(ValueError, match="unknown style loss"):
        memory.estimate_parts(64, 64, ["relu4_2"], ["relu1_1"], style_loss="lap")


@pytest.mark.slow
def test_cli_runs_each_style_loss(small_images, tmp_path, capsys):
    content, style = small_images
    for style_loss in ("w2", "mrf"):
        out = tmp_path / f"{style_loss}.png"
        code = cli.main([str(content), str(style), "-o", str(out), "--size", "48", "--steps", "2",
                         "--weights", "random", "--device", "cpu", "--style-loss", style_loss, "-q"])
        assert code == 0 and out.exists()
    with pytest.raises(SystemExit) as exc:
        cli.main([str(content), str(style), "--style-loss", "lap"])
    assert exc.value.code == 2
    assert "invalid choice: 'lap'" in capsys.readouterr().err


def test_style_variants_are_rotated_and_scaled_copies():
    image = _rand(1, 3, 30, 40, seed=23, dtype=torch.float32)
    variants = mrf.style_variants(image)
    assert len(variants) == 9 and all(v.shape == image.shape for v in variants)
    assert sum(torch.equal(v, image) for v in variants) == 1
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in variants)
    # A pure scaling keeps the centre pixel; a rotation turns a horizontal bar.
    bar = torch.zeros(1, 3, 41, 61)
    bar[..., 20, 10:51] = 1.0
    rotated = mrf.style_variants(bar)[1]  # -7.5 degrees, scale 1
    rows = rotated[0, 0].nonzero()[:, 0].float()
    assert float(rows.max() - rows.min()) >= 4  # 40 px at 7.5 degrees spans ~5 rows
    assert torch.allclose(mrf.style_variants(bar)[3][..., 20, 30], bar[..., 20, 30], atol=0.05)


@pytest.mark.slow
def test_mrf_variants_pool_their_patches(transfer, small_images, tmp_path):
    f = _rand(1, 3, 9, 9, seed=24)
    a, b = _rand(1, 3, 7, 7, seed=25), 2 * _rand(1, 3, 9, 7, seed=26)
    pooled = mrf.MRFStyle([[a, b]], [1.0])
    assert float(pooled(f)) == pytest.approx(_mrf_direct(f, [[a, b]], [1.0]), rel=1e-10)
    assert float(pooled(f)) != pytest.approx(float(mrf.MRFStyle([a], [1.0])(f)), rel=1e-3)

    content, style = small_images
    seen = {}
    for variants in (False, True):
        transfer.stylize_tensor(content, style, size=48, steps=2, style_loss="mrf", mrf_variants=variants,
                                callback=lambda i, v=variants: seen.setdefault(v, float(i.losses["style"])))
    assert seen[True] != pytest.approx(seen[False], rel=1e-4)
    with pytest.raises(NstError, match="mrf_variants needs style_loss mrf"):
        Options(mrf_variants=True).resolve()
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(out), "--size", "48", "--steps", "1", "--weights",
                     "random", "--device", "cpu", "--style-loss", "mrf", "--mrf-variants", "-q"])
    assert code == 0 and out.exists()
