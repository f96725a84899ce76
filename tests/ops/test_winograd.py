"""The CPU Winograd convolution against F.conv2d, and its use inside VGG-19."""
import pytest
import torch
import torch.nn.functional as F

from nst_fast.nets import vgg
from nst_fast.ops import backend, winograd

pytestmark = pytest.mark.skipif(
    not backend.has_op_kernel("conv3x3_winograd", "cpu"), reason="extension not built"
)

# (N, C, K, H, W): odd sizes (partial tiles), a 1x1 image, batch 2; the blocked path
# with a short last block (50x50 -> 169 tiles) through the AVX-512 GEMM; the one-pass
# path (few tiles) through BLAS (K not a multiple of 32, or C K large) and through the
# AVX-512 GEMM with every row remainder (9 tiles = 8 + 1).
SHAPES = [(1, 5, 7, 9, 11), (2, 17, 33, 13, 6), (1, 3, 5, 1, 1), (1, 64, 64, 50, 50), (1, 40, 24, 8, 8),
          (1, 64, 96, 12, 12), (1, 384, 384, 6, 5)]


def _case(shape, dtype, seed=0):
    n, c, k, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(k, c, 3, 3, generator=gen, dtype=torch.float64) / (3 * c**0.5)
    bias = torch.randn(k, generator=gen, dtype=torch.float64)
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


def _transforms(weight):
    return winograd.weight_transform(weight), winograd.weight_transform(weight.flip(2, 3).transpose(0, 1))


def _rel_max(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 3e-5)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_forward_and_input_gradient_match_conv2d(shape, dtype, tol, layout):
    x, weight, bias = _case(shape, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    u, u_grad = _transforms(weight)
    grad_out = torch.randn(shape[0], shape[2], shape[3], shape[4], dtype=torch.float64)

    x64 = x.double().requires_grad_(True)
    want = F.conv2d(x64, weight.double(), bias.double(), padding=1)
    (want_grad,) = torch.autograd.grad(want, x64, grad_out)

    xw = x.clone().requires_grad_(True)
    got = winograd.conv3x3(xw, u, u_grad, bias)
    (got_grad,) = torch.autograd.grad(got, xw, grad_out.to(dtype))
    assert got.dtype == dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert _rel_max(got, want) <= tol
    assert _rel_max(got_grad, want_grad) <= tol


def test_without_bias_and_on_a_non_contiguous_input():
    x, weight, _ = _case((1, 8, 16, 20, 24), torch.float64)
    x = x[:, :, ::2, ::2]  # a strided view
    u, u_grad = _transforms(weight)
    assert _rel_max(winograd.conv3x3(x, u, u_grad), F.conv2d(x, weight, padding=1)) <= 1e-12


def test_gradcheck():
    x, weight, bias = _case((1, 3, 4, 5, 6), torch.float64)
    u, u_grad = _transforms(weight)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: winograd.conv3x3(t, u, u_grad, bias), (x,))


def test_opcheck():
    x, weight, bias = _case((1, 6, 5, 7, 9), torch.float32)
    u, _ = _transforms(weight)
    torch.library.opcheck(torch.ops.nst_fast.conv3x3_winograd, (x, u, bias))
    torch.library.opcheck(torch.ops.nst_fast.conv3x3_winograd, (x, u, None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_traces_under_torch_compile_fullgraph(dtype, monkeypatch):
    if dtype == torch.bfloat16 and not winograd.bf16_kernel_available():
        pytest.skip("this CPU has no AVX512-BF16")
    monkeypatch.setenv("NST_FAST_WINOGRAD_BF16", "1")
    conv = winograd.WinogradConv2d(torch.nn.Conv2d(32, 32, 3, padding=1).to(dtype).requires_grad_(False))
    x = torch.randn(1, 32, 9, 7, dtype=dtype, requires_grad=True)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    (got_grad,) = torch.autograd.grad(got.float().square().sum(), x)
    want = conv(x)
    (want_grad,) = torch.autograd.grad(want.float().square().sum(), x)
    assert _rel_max(got, want) <= 1e-6 and _rel_max(got_grad, want_grad) <= 1e-6


@pytest.mark.parametrize(
    "args,message",
    [
        ((torch.randn(1, 4, 5, 5), torch.randn(36, 3, 2), None), "weight_transform must be"),
        ((torch.randn(4, 5, 5), torch.randn(36, 4, 2), None), "input must be"),
        ((torch.randn(1, 4, 5, 5), torch.randn(36, 4, 2), torch.randn(3)), "bias must be"),
        ((torch.randn(1, 4, 5, 5).half(), torch.randn(36, 4, 2).half(), None), "float32, float64 or bfloat16"),
        ((torch.randn(1, 4, 5, 5).bfloat16(), torch.randn(36, 4, 2).bfloat16(), None), "packed as .36, C / 2, K, 2."),
        ((torch.randn(1, 5, 5, 5).bfloat16(), torch.randn(36, 2, 32, 2).bfloat16(), None), "an even C"),
        ((torch.randn(1, 4, 5, 5), torch.randn(36, 4, 2).double(), None), "dtype and device"),
    ],
)
def test_bad_arguments_raise(args, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.nst_fast.conv3x3_winograd(*args)


def _counting(monkeypatch):
    """Counts Winograd convolutions, with Winograd on whatever the environment says."""
    monkeypatch.setenv("NST_FAST_WINOGRAD", "1")
    monkeypatch.setenv("NST_FAST_BACKEND", "auto")
    monkeypatch.delenv("NST_FAST_WINOGRAD_BF16", raising=False)
    calls = []
    real = winograd.conv3x3

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(winograd, "conv3x3", counted)
    return calls


def test_vgg_runs_winograd_in_fp32_on_the_cpu_and_in_bf16_where_asked(monkeypatch):
    calls = _counting(monkeypatch)
    net = vgg.VGGFeatures(["relu2_1"], vgg.random_state(0))
    image = torch.rand(1, 3, 20, 24)
    out = net(image)["relu2_1"]
    assert len(calls) == 2  # conv1_2 and conv2_1; conv1_1 stays direct
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(image)
    assert len(calls) == 2  # bf16: oneDNN unless NST_FAST_WINOGRAD_BF16=1
    monkeypatch.setenv("NST_FAST_WINOGRAD_BF16", "1")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(image)
    bf16 = 2 if winograd.bf16_available() else 0
    assert len(calls) == 2 + bf16
    monkeypatch.setenv("NST_FAST_WINOGRAD", "0")
    direct = net(image)["relu2_1"]
    assert len(calls) == 2 + bf16
    assert _rel_max(out, direct) <= 3e-5


def test_weight_transforms_follow_in_place_weight_changes():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1).requires_grad_(False)
    wconv = winograd.WinogradConv2d(conv)
    x = torch.randn(1, 4, 8, 8)
    wconv(x)
    with torch.no_grad():
        conv.weight.mul_(-2.0)
    assert _rel_max(wconv(x), conv(x)) <= 3e-5


def test_only_plain_3x3_convolutions_are_taken():
    with pytest.raises(ValueError, match="3x3"):
        winograd.WinogradConv2d(torch.nn.Conv2d(4, 4, 3, padding=1, stride=2))


@pytest.mark.slow
def test_stylize_with_winograd_tracks_direct_convolutions(small_images, monkeypatch):
    """Early on the images agree closely; later L-BFGS amplifies rounding differences
    (measured on 64-pixel runs: mean pixel difference 2e-8 after 3 steps, 1e-6 to
    2e-4 after 5, 7e-4 after 10, 0.05 after 40), so the long run is compared by its
    final loss. Perturbing the content image by 1e-6 moves that loss over a 2% range
    (8.05-8.21 for both convolutions), so 3% is the bound."""
    from nst_fast import StyleTransfer

    content, style = small_images
    transfer = StyleTransfer(weights="random", device="cpu")

    def run(steps):
        seen = []
        img = transfer.stylize_tensor(content, style, size=64, steps=steps, init="content",
                                      callback=lambda i: seen.append(float(i.losses["total"])))
        return img, seen

    calls = _counting(monkeypatch)
    fast_short, _ = run(3)
    _, fast = run(40)
    assert calls  # these runs did use Winograd
    monkeypatch.setenv("NST_FAST_WINOGRAD", "0")
    direct_short, _ = run(3)
    _, direct = run(40)
    assert (fast_short - direct_short).abs().mean() <= 1e-4
    assert direct[0] / direct[-1] > 10  # the runs did optimise
    assert abs(fast[-1] - direct[-1]) / direct[-1] <= 0.03


# ---- bfloat16 (AVX512-BF16 CPUs): bf16 operands, float32 products and sums

needs_bf16 = pytest.mark.skipif(not winograd.bf16_kernel_available(), reason="this CPU has no AVX512-BF16")
# C and K multiples of 32; partial tiles, batch 2, the blocked path (169 tiles), the
# one-pass path (deep layers: few tiles, many channels) with every row remainder.
BF16_SHAPES = [(1, 32, 32, 13, 7), (2, 64, 32, 9, 10), (1, 64, 64, 50, 50), (1, 64, 96, 12, 12),
               (1, 384, 384, 6, 5)]


def test_bf16_weight_transform_packs_pairs_of_rows():
    _, weight, _ = _case((1, 6, 32, 1, 1), torch.float32)
    u = winograd.weight_transform(weight.to(torch.bfloat16), compute=torch.float32)
    packed = winograd.weight_transform_bf16(weight)
    assert u.dtype == torch.bfloat16 and _rel_max(u, winograd.weight_transform(weight)) <= 1e-2
    assert packed.shape == (36, 3, 32, 2) and packed.dtype == torch.bfloat16
    for i in range(3):
        for j in range(2):
            assert torch.equal(packed[:, i, :, j], u[:, 2 * i + j, :])


@needs_bf16
@pytest.mark.parametrize("shape", BF16_SHAPES)
def test_bf16_forward_and_input_gradient_match_conv2d(shape):
    """Against float64 convolutions of the same bf16 inputs. Rounding the transformed
    tiles and weights to bf16 costs accuracy that the transforms' coefficients (up to
    8 per side) amplify. Measured on these signed random inputs, relative to the
    largest output: mean 1.8-2.8e-3 forward and 2.9-4.0e-3 for the gradient (8-13x a
    direct bf16 convolution's), at most 3-5e-2 and 7-8e-2. Bounds ~1.5x those. A
    whole run's final loss is what this costs in the end (docs/decisions.md)."""
    x, weight, bias = (t.to(torch.bfloat16) for t in _case(shape, torch.float32))
    grad_out = torch.randn(shape[0], shape[2], shape[3], shape[4], generator=torch.Generator().manual_seed(1))
    grad_out = grad_out.to(torch.bfloat16)
    x64 = x.double().requires_grad_(True)
    want = F.conv2d(x64, weight.double(), bias.double(), padding=1)
    (want_grad,) = torch.autograd.grad(want, x64, grad_out.double())

    flipped = weight.flip(2, 3).transpose(0, 1)
    u, u_grad = winograd.weight_transform_bf16(weight), winograd.weight_transform_bf16(flipped)
    xw = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    got = winograd.conv3x3(xw, u, u_grad, bias)
    (got_grad,) = torch.autograd.grad(got, xw, grad_out)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape and got_grad.dtype == torch.bfloat16
    direct = F.conv2d(x, weight, bias, padding=1)
    for value, reference in ((got, want), (got_grad, want_grad)):
        scale = reference.abs().max()
        assert ((value.double() - reference).abs().max() / scale).item() <= 0.12
        assert ((value.double() - reference).abs().mean() / scale).item() <= 6e-3
    mean_error = lambda t: (t.double() - want).abs().mean().item()  # noqa: E731
    assert mean_error(got) <= 20 * mean_error(direct)


@needs_bf16
def test_bf16_layers_run_winograd_only_where_asked_and_their_channels_fit(monkeypatch):
    calls = _counting(monkeypatch)
    monkeypatch.setenv("NST_FAST_WINOGRAD_BF16", "0")
    off = winograd.WinogradConv2d(torch.nn.Conv2d(32, 64, 3, padding=1)).to(torch.bfloat16).requires_grad_(False)
    off(torch.rand(1, 32, 9, 9, dtype=torch.bfloat16))
    assert not calls  # bf16 Winograd is opt-in
    monkeypatch.setenv("NST_FAST_WINOGRAD_BF16", "1")
    fits = winograd.WinogradConv2d(torch.nn.Conv2d(32, 64, 3, padding=1)).to(torch.bfloat16).requires_grad_(False)
    odd = winograd.WinogradConv2d(torch.nn.Conv2d(32, 40, 3, padding=1)).to(torch.bfloat16).requires_grad_(False)
    x = torch.rand(1, 32, 9, 9, dtype=torch.bfloat16)
    fits(x)
    assert len(calls) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fits(x.float())
    assert len(calls) == 2
    odd(x)
    assert len(calls) == 2  # K = 40: the ordinary convolution
    monkeypatch.setenv("NST_FAST_WINOGRAD", "0")
    fits(x)
    assert len(calls) == 2
