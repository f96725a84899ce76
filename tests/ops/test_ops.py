"""The fused ops (CPU kernels and the reference path) against the reference in float64."""
import pytest
import torch

from nst_fast import NstError, StyleTransfer
from nst_fast.ops import backend, reference, style_loss as ops

SHAPES = [(1, 3, 1), (1, 3, 97), (2, 65, 33), (3, 64, 128), (1, 128, 1025)]


def _features(shape, dtype, seed, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(shape, generator=gen, dtype=torch.float64).relu_() + 0.01
    if channels_last:
        f = f.transpose(1, 2).contiguous().transpose(1, 2)
    return f.to(dtype)


def _target(b, c, m, seed):
    other = _features((b, c, m + 5), torch.float64, seed)
    return reference.gram(other)  # symmetric, as every real target is


def _oracle(f, target, scale):
    f64 = f.detach().double().requires_grad_(True)
    loss, _ = reference.style_loss_forward(f64, target.double(), scale)
    (grad,) = torch.autograd.grad(loss, f64)
    return loss.detach(), grad


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_style_loss_matches_float64_reference(op_backend, shape, dtype, tol, layout):
    b, c, m = shape
    if layout == "sliced":  # a non-contiguous view: every other position of a wider tensor
        f = _features((b, c, 2 * m), dtype, 1)[:, :, ::2]
        assert not f.is_contiguous()
    else:
        f = _features(shape, dtype, 1, channels_last=layout == "channels_last")
    target = _target(b, c, m, 2).to(reference.accum_dtype(dtype))
    scale = 1.0 / (4 * c * c * m * m)
    want_loss, want_grad = _oracle(f, target, scale)
    # D = G - A loses the digits G and A share, so even an exactly rounded Gram matrix
    # errs in D, and in dF = 4 s D F, by its rounding times |G| / |D|: the gradient's
    # bound scales with that (as tests/sanitizer_run.py judges the CUDA kernels).
    # 8.4 at (1, 128, 1025), where MKL's float32 Gram on an Intel Xeon errs by 6.8e-7.
    gram = reference.gram(f.detach().double())
    conditioning = max(1.0, (gram.norm() / (gram - target.double()).norm()).item())

    f = f.detach().requires_grad_(True)
    loss = ops.style_loss(f, target, scale)
    (grad,) = torch.autograd.grad(loss, f)
    assert loss.dtype == reference.accum_dtype(dtype)
    assert grad.shape == f.shape and grad.dtype == dtype
    assert _rel(loss, want_loss) <= tol
    assert _rel(grad, want_grad) <= tol * conditioning


def test_bfloat16_features_keep_float32_loss(op_backend):
    f32 = _features((2, 64, 300), torch.float32, 3)
    f = f32.to(torch.bfloat16)
    target = _target(2, 64, 300, 4).float()
    scale = 1.0 / (4 * 64 * 64 * 300 * 300)
    # The oracle sees the same bf16-rounded features, so only accumulation differs.
    want_loss, want_grad = _oracle(f, target, scale)
    f = f.requires_grad_(True)
    loss = ops.style_loss(f, target, scale)
    (grad,) = torch.autograd.grad(loss, f)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert _rel(loss, want_loss) <= 1e-5
    assert _rel(grad, want_grad) <= 1e-2  # the gradient itself is rounded to bf16
    # ... and rounded once, from an fp32-accurate value: nearly every element is the
    # exact gradient rounded to bf16 (a residual truncated to tf32 misses ~7%).
    assert (grad != want_grad.to(torch.bfloat16)).float().mean().item() <= 0.01


@pytest.mark.parametrize("shape", [(1, 3, 5), (2, 4, 7)])
def test_gradcheck_float64(op_backend, shape):
    b, c, m = shape
    f = _features(shape, torch.float64, 5).requires_grad_(True)
    target = _target(b, c, m, 6)
    assert torch.autograd.gradcheck(lambda x: ops.style_loss(x, target, 0.37), (f,))


def test_target_broadcast_over_batch(op_backend):
    f = _features((3, 8, 20), torch.float64, 7)
    target = _target(1, 8, 20, 8)
    loss = ops.style_loss(f, target, 1.0)
    want = sum(reference.style_loss_forward(f[i : i + 1], target, 1.0)[0] for i in range(3))
    assert _rel(loss, want) <= 1e-12


def test_four_dimensional_features(op_backend):
    f = _features((1, 16, 35), torch.float32, 9).view(1, 16, 5, 7)
    f_cl = f.contiguous(memory_format=torch.channels_last)
    target = _target(1, 16, 35, 10).float()
    a = ops.style_loss(f, target, 1e-3)
    b = ops.style_loss(f_cl, target, 1e-3)
    assert _rel(a, b) <= 1e-6
    assert _rel(ops.gram(f_cl), reference.gram(f.flatten(2).double())) <= 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_matches_reference(op_backend, shape):
    f = _features(shape, torch.float32, 11)
    g = ops.gram(f)
    assert g.dtype == torch.float32
    assert _rel(g, reference.gram(f.double())) <= 1e-6
    assert torch.equal(g, g.transpose(1, 2)) or _rel(g, g.transpose(1, 2)) <= 1e-7


@pytest.mark.skipif(not backend.extension_loaded(), reason="extension not built")
def test_opcheck():
    f = _features((2, 5, 9), torch.float64, 12).requires_grad_(True)
    target = _target(2, 5, 9, 13)
    torch.library.opcheck(torch.ops.nst_fast.style_loss_forward, (f, target, 0.5))
    torch.library.opcheck(torch.ops.nst_fast.gram, (f.detach(),))
    loss, residual = torch.ops.nst_fast.style_loss_forward(f.detach(), target, 0.5)
    grad_out = torch.rand((), dtype=torch.float64) + 0.5
    torch.library.opcheck(torch.ops.nst_fast.style_loss_backward, (grad_out, residual, f.detach(), 0.5))


@pytest.mark.skipif(not backend.extension_loaded(), reason="extension not built")
@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda: (torch.randn(5, 9), torch.zeros(1, 5, 5), 1.0), "must be \\(B, C, M\\)"),
        (lambda: (torch.randn(1, 5, 9, dtype=torch.float64), torch.zeros(1, 5, 5), 1.0), "must be Double"),
        (lambda: (torch.randn(1, 5, 9), torch.zeros(1, 4, 4), 1.0), "C = 5"),
        (lambda: (torch.randint(0, 3, (1, 5, 9)), torch.zeros(1, 5, 5), 1.0), "float32, float64"),
    ],
)
def test_clear_errors(make_args, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.nst_fast.style_loss_forward(*make_args())


def test_backend_switch(monkeypatch):
    monkeypatch.setenv("NST_FAST_BACKEND", "reference")
    assert backend.describe()["cpu"] == "reference"
    monkeypatch.setenv("NST_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="NST_FAST_BACKEND"):
        backend.get_backend()
    monkeypatch.setenv("NST_FAST_BACKEND", "auto")
    expected = "extension" if backend.extension_loaded() else "reference"
    assert backend.describe()["cpu"] == expected


def test_an_unknown_backend_is_an_nst_error_at_the_first_call(monkeypatch):
    monkeypatch.setenv("NST_FAST_BACKEND", "bogus")
    with pytest.raises(NstError, match="^NST_FAST_BACKEND must be one of auto, extension, reference, got 'bogus'$"):
        StyleTransfer(weights="random", device="cpu")
    with pytest.raises(NstError, match="^backend must be one of auto, extension, reference, got 'fast'$"):
        backend.set_backend("fast")


def test_reference_is_used_where_the_extension_is_forced_off(monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "style_loss_forward",
                        lambda *a: calls.append(1) or reference.gram(a[0]).sum().reshape(()).mul(0) and None or
                        (torch.zeros(()), None))
    backend.set_backend("reference")
    try:
        ops.style_loss(torch.rand(1, 3, 4), torch.eye(3).unsqueeze(0), 1.0)
    finally:
        backend.set_backend(None)
    assert calls == [1]


def test_each_op_runs_its_kernel_unless_the_reference_is_asked_for(monkeypatch):
    monkeypatch.setenv("NST_FAST_BACKEND", "auto")
    assert [backend.runs_extension(op, "cpu") for op in backend.OPS] == \
        [backend.has_op_kernel(op, "cpu") for op in backend.OPS]
    monkeypatch.setenv("NST_FAST_BACKEND", "reference")
    assert not any(backend.runs_extension(op, "cpu") for op in backend.OPS)


def test_autocast_keeps_residual_and_loss_in_float32(op_backend):
    """G close to A: rounding G to bf16 before G - A (a plain mm under autocast) destroys
    the residual; the fused op keeps it."""
    f = _features((1, 32, 400), torch.float32, 14)
    target = reference.gram(f.double()).float() * 1.001  # a residual 0.1% of G
    scale = 1.0 / (4 * 32 * 32 * 400 * 400)
    exact = reference.style_loss_forward(f.double(), target.double(), scale)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ops.style_loss(f, target, scale)
        flat = f.flatten(2)
        plain = scale * (torch.bmm(flat, flat.transpose(1, 2)) - target).float().square().sum()
    assert loss.dtype == torch.float32
    assert _rel(loss, exact) <= 1e-2  # fp32 Gram rounding, relative to a 0.1% residual
    assert _rel(plain, exact) > 0.5  # the failure the fused op avoids is real


def test_traces_under_torch_compile_fullgraph(op_backend):
    f = _features((1, 8, 30), torch.float32, 15).requires_grad_(True)
    target = _target(1, 8, 30, 16).float()

    def step(x):
        loss = ops.style_loss(x, target, 1e-3)
        return loss, torch.autograd.grad(loss, x)[0]

    want_loss, want_grad = step(f)
    compiled = torch.compile(lambda x: ops.style_loss(x, target, 1e-3), fullgraph=True, backend="aot_eager")
    loss = compiled(f)
    (grad,) = torch.autograd.grad(loss, f)
    assert _rel(loss, want_loss) <= 1e-6 and _rel(grad, want_grad) <= 1e-6
