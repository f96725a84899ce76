"""End to end on small images with a seeded random VGG-19: behaviour, not beauty."""
import math

import numpy as np
import pytest
import torch

import nst_fast
from nst_fast import Interrupted, NonFiniteLoss, NstError, StyleTransfer
from nst_fast.ops import backend, reference


@pytest.fixture(scope="module")
def transfer():
    return StyleTransfer(weights="random", device="cpu")


def _losses(transfer, content, style, **kw):
    seen = []
    img = transfer.stylize(content, style, callback=lambda i: seen.append(i), **kw)
    return img, seen


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,factor", [("lbfgs", 100), ("adam", 20)])
def test_loss_falls_and_output_has_content_size(transfer, small_images, optimizer, factor):
    content, style = small_images
    img, seen = _losses(transfer, content, style, size=64, steps=30, init="noise", optimizer=optimizer)
    totals = [float(i.losses["total"]) for i in seen]
    assert len(seen) == 30 and [i.step for i in seen] == list(range(1, 31))  # one callback per step
    assert totals[0] / min(totals) > factor
    assert img.size == (64, 48)


@pytest.mark.skipif(not backend.has_op_kernel("lbfgs_step", "cpu"),
                    reason="the extension has no fused L-BFGS kernel")
def test_the_loop_runs_the_fused_lbfgs_step(transfer, small_images, monkeypatch):
    """The image's gradient comes back channels-last from the network; the loop must
    still take the fused op, not the PyTorch-ops fallback."""
    def fallback(*args, **kwargs):
        raise AssertionError("the PyTorch-ops L-BFGS step ran")

    monkeypatch.setattr(reference, "lbfgs_step", fallback)
    content, style = small_images
    _, seen = _losses(transfer, content, style, size=48, steps=4)
    assert len(seen) == 4


@pytest.mark.slow
def test_same_seed_same_image(transfer, small_images):
    content, style = small_images
    a = transfer.stylize(content, style, size=48, steps=5, init="noise", seed=7)
    b = transfer.stylize(content, style, size=48, steps=5, init="noise", seed=7)
    c = transfer.stylize(content, style, size=48, steps=5, init="noise", seed=8)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_inputs_as_pil_and_tensor(transfer, small_images):
    from PIL import Image

    content, style = small_images
    img = transfer.stylize(Image.open(content), nst_fast.imaging.images.to_tensor(style)[0], size=32, steps=2)
    assert img.size == (32, 24)
    assert transfer.stylize(np.asarray(Image.open(content)), np.asarray(Image.open(style)), size=32,
                            steps=2).size == (32, 24)


def test_parts_and_weights(transfer, small_images):
    content, style = small_images
    _, seen = _losses(transfer, content, style, size=32, steps=1, init="noise", tv_weight=2.0,
                      content_weight=3.0, style_weight=5.0, style_layers="relu1_1:3,relu2_1:1")
    parts = {k: float(v) for k, v in seen[0].losses.items()}
    style = 0.75 * parts["style:relu1_1"] + 0.25 * parts["style:relu2_1"]  # weights normalised to 1
    assert math.isclose(parts["style"], style, rel_tol=1e-5)
    assert math.isclose(parts["total"], 3 * parts["content"] + 5 * parts["style"] + 2 * parts["tv"], rel_tol=1e-5)
    assert parts["tv"] > 0


@pytest.mark.parametrize("init", ["content", "style", "noise", "image"])
def test_inits(transfer, small_images, init):
    content, style = small_images
    out = transfer.stylize_tensor(content, style, size=32, steps=0, init=style if init == "image" else init)
    c = nst_fast.imaging.images.resize_long_side(nst_fast.imaging.images.to_tensor(content), 32)
    if init == "content":
        assert torch.allclose(out, c)
    else:
        assert not torch.allclose(out, c, atol=0.05)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": -1}, "steps must be 0 or more"),
        ({"style_layers": "relu1_1,relu7_1"}, "unknown style layer 'relu7_1'"),
        ({"content_layers": "conv9"}, "unknown content layer"),
        ({"style_weight": float("nan")}, "style_weight must be a finite number"),
        ({"content_weight": -1.0}, "content_weight must be non-negative"),
        ({"optimizer": "sgd"}, "optimizer must be one of"),
        ({"init": "zeros"}, "init must be one of"),
        ({"size": 8}, "at least 16"),
        ({"style_layers": "relu1_1:abc"}, "not a number"),
        ({"precision": "fp8"}, "precision must be"),
        ({"stpes": 3}, "unknown option 'stpes' \\(did you mean 'steps'\\?\\)"),
        ({"gpu": 0}, "unknown option 'gpu'; the options are the fields of nst_fast.Options"),
    ],
)
def test_bad_options(transfer, small_images, kwargs, message):
    content, style = small_images
    with pytest.raises(NstError, match=message):
        transfer.stylize(content, style, **{"size": 32, "steps": 1, **kwargs})


def test_image_too_small_for_the_network(transfer, tmp_path):
    from PIL import Image

    Image.new("RGB", (200, 10), (10, 200, 30)).save(tmp_path / "thin.png")
    with pytest.raises(NstError, match="need at least 16 pixels"):
        transfer.stylize(tmp_path / "thin.png", tmp_path / "thin.png", size=64, steps=1)
    # A sliver that rounds to no pixels at all, and a style scaled to nothing, get the same error.
    with pytest.raises(NstError, match="need at least 16 pixels"):
        transfer.stylize(torch.rand(3, 1, 500), tmp_path / "thin.png", size=64, steps=1)
    with pytest.raises(NstError, match="it needs at least 16 pixels per side"):
        transfer.stylize(torch.rand(3, 64, 64), torch.rand(3, 64, 64), size=64, steps=1, style_scale=0.001)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_finite_image(transfer, small_images, monkeypatch):
    content, style = small_images
    from nst_fast.losses import gatys as losses

    real = losses.GatysLoss.terms
    calls = []

    def poisoned(self, image):
        total, terms = real(self, image)
        calls.append(1)
        return (total * float("nan") if len(calls) > 3 else total), terms

    monkeypatch.setattr(losses.GatysLoss, "terms", poisoned)
    with pytest.raises(NonFiniteLoss, match="did not recover") as info:
        transfer.stylize(content, style, size=32, steps=40, init="noise")
    assert info.value.image is not None and torch.isfinite(info.value.image).all()
    assert info.value.step < 40


def test_interrupt_returns_image_so_far(transfer, small_images):
    content, style = small_images

    def interrupt(info):
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        try:
            transfer.stylize(content, style, size=32, steps=20, callback=interrupt)
        except Exception:  # a caller's catch-all, or `except NstError`, lets Ctrl-C through
            pytest.fail("Ctrl-C was taken for an error")
    assert info.value.step == 3 and info.value.image.shape == (1, 3, 24, 32)
    assert isinstance(info.value, KeyboardInterrupt) and not isinstance(info.value, NstError)


@pytest.mark.slow
def test_module_level_stylize_reuses_the_network(small_images):
    content, style = small_images
    img = nst_fast.stylize(content, style, weights="random", device="cpu", size=32, steps=1)
    cached = nst_fast.stylize.__globals__["_cached"]
    (first,) = cached.values()
    nst_fast.stylize(content, style, weights="random", device="cpu", size=32, steps=1)
    assert list(cached.values()) == [first]
    assert img.size == (32, 24)


def test_stylize_returns_rgba_for_a_transparent_content(small_images):
    from PIL import Image

    content, style = small_images
    photo = Image.open(content).convert("RGBA")
    photo.putalpha(Image.linear_gradient("L").resize(photo.size))
    out = nst_fast.stylize(photo, style, weights="random", device="cpu", size=32, steps=1, progress=False)
    assert out.mode == "RGBA" and out.size == (32, 24)
    assert out.getchannel("A").getextrema()[0] < 20  # the gradient's transparent top survives
    plain = nst_fast.stylize(content, style, weights="random", device="cpu", size=32, steps=1, progress=False)
    assert plain.mode == "RGB"


def test_stylize_shows_progress_unless_asked_not_to(small_images, capsys):
    content, style = small_images
    nst_fast.stylize(content, style, weights="random", device="cpu", size=32, steps=4)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[") and "1/4" in lines[0] and "total" in lines[0]
    assert "4/4" in lines[-1]
    seen = []
    nst_fast.stylize(content, style, weights="random", device="cpu", size=32, steps=4, progress=False,
                     callback=lambda info: seen.append(info.step))
    assert capsys.readouterr().err == "" and seen == [1, 2, 3, 4]
    nst_fast.stylize(content, style, weights="random", device="cpu", size=32, steps=2,
                     callback=lambda info: seen.append(info.step))
    assert seen[-2:] == [1, 2] and "2/2" in capsys.readouterr().err  # both: the bar and the user's callback


def test_unknown_device():
    with pytest.raises(NstError, match="unknown device"):
        StyleTransfer(weights="random", device="toaster")


@pytest.mark.parametrize("device", ["meta", "xla"])
def test_a_device_type_nst_fast_cannot_run_on_is_refused(device):
    with pytest.raises(NstError, match=f"device '{device}' is not supported; use cpu, cuda"):
        StyleTransfer(weights="random", device=device)


@pytest.mark.parametrize("device, available",
                         [("cuda", torch.cuda.is_available), ("mps", torch.backends.mps.is_available)])
def test_a_device_this_machine_lacks_is_named(device, available):
    if available():
        pytest.skip(f"this machine has {device}")
    with pytest.raises(NstError, match=f"device {device} was asked for but .*; use device cpu"):
        StyleTransfer(weights="random", device=device)


@pytest.mark.slow
def test_bf16_precision_keeps_bf16_weights_and_tracks_fp32(transfer, small_images):
    content, style = small_images
    _, fp32 = _losses(transfer, content, style, size=48, steps=20, init="noise")
    _, bf16 = _losses(transfer, content, style, size=48, steps=20, init="noise", precision="bf16")
    net = transfer.network(["relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"], "bf16")
    assert net.net[0].weight.dtype == torch.bfloat16
    assert transfer.network(["relu1_1"]).net[0].weight.dtype == torch.float32
    first, last = float(bf16[0].losses["total"]), float(bf16[-1].losses["total"])
    assert last < first / 10
    assert abs(last / float(fp32[-1].losses["total"]) - 1) < 0.1


def _tf32_flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("precision, users_flags", [("fp32", (True, True)), ("tf32", (False, False))])
def test_the_backward_runs_in_the_precision_asked_for(transfer, small_images, monkeypatch, precision, users_flags):
    """The TF32 switches pick the backward's convolutions and style kernels too (on a GPU):
    set during the step's backward as during its forward, the user's own restored after."""
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            seen.append(("forward", _tf32_flags()))
            return t.view_as(t)

        @staticmethod
        def backward(ctx, g):
            seen.append(("backward", _tf32_flags()))
            return g

    terms = nst_fast.losses.gatys.GatysLoss.terms
    monkeypatch.setattr(nst_fast.losses.gatys.GatysLoss, "terms",
                        lambda self, image: (lambda total, t: (Probe.apply(total), t))(*terms(self, image)))
    before = _tf32_flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = users_flags
    try:
        transfer.stylize_tensor(*small_images, size=32, steps=2, precision=precision)
        after = _tf32_flags()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    wanted = (precision == "tf32",) * 2
    assert [kind for kind, _ in seen] == ["forward", "backward"] * 2
    assert all(flags == wanted for _, flags in seen)
    assert after == users_flags


def test_tf32_on_a_cpu_says_the_run_was_fp32(transfer, small_images):
    asked = transfer.run(*small_images, size=32, steps=1, precision="tf32")
    assert "this run was exact fp32" in asked.note and asked.options.precision == "tf32"
    default = transfer.run(*small_images, size=32, steps=1)
    assert default.options.precision == "fp32" and default.notes == []


def test_callback_images_are_the_callbacks_to_keep(transfer, small_images):
    """Frames kept from a callback (for an animation) stay as they were, and changing
    one does not change the run."""
    content, style = small_images
    kept = []

    def keep_and_scribble(info):
        kept.append(info.image.clone())
        info.image.zero_()

    result = transfer.stylize_tensor(content, style, size=32, steps=4, init="noise", callback=keep_and_scribble)
    assert torch.equal(kept[-1].clamp(0, 1), result)
    assert not torch.equal(kept[0], kept[-1])
    frames = []
    transfer.stylize_tensor(content, style, size=32, steps=4, init="noise", callback=lambda i: frames.append(i.image))
    assert all(torch.equal(a, b) for a, b in zip(frames, kept))


@pytest.mark.slow
def test_stylize_seeds_random_weights_as_the_command_line_does(small_images):
    content, style = small_images
    run = dict(weights="random", device="cpu", size=32, steps=3, progress=False)  # from the content: no noise
    a, b, again = (nst_fast.stylize(content, style, seed=s, **run) for s in (0, 7, 0))
    assert a.tobytes() != b.tobytes() and a.tobytes() == again.tobytes()
