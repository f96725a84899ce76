"""The CUDA kernels of the fused style-loss ops against the float64 reference.

Skips (module level) where there is no GPU or the extension has no CUDA kernel.

Tolerances (norm-wise relative error ||out - ref|| / ||ref||, reference in float64
on the same input values):
  float32 features: loss, residual, Gram and gradient <= 1e-5 (3xTF32 kernels).
  bfloat16 features: loss, residual and Gram <= 2e-5 (bf16 products are exact in
    tf32, fp32 accumulation); gradient <= 4e-3 (the gradient is rounded to bf16,
    2^-9 relative per element at most), and at most 1% of its elements differ from
    the float64 gradient rounded to bf16 (an fp32-accurate kernel: ~1e-5 of them,
    emulated on the CPU; the residual truncated to tf32: ~7%).
  float32 features with TF32 matmuls allowed (one TF32 product per pair): <= 5e-3
    (each operand rounded to 10 mantissa bits, 2^-11 relative; the loss squares
    the residual, doubling it; margin for the sum over M).
"""
import pytest
import torch

from nst_fast.ops import backend, reference, style_loss as ops


def _cuda_kernel_present() -> bool:
    try:
        return torch.cuda.is_available() and backend._has_kernel("cuda")
    except Exception:  # pragma: no cover
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not _cuda_kernel_present(), reason="needs a CUDA GPU and the nst_fast CUDA kernels"
)]

DEV = "cuda"
FP32 = pytest.param(torch.float32, id="fp32")
BF16 = pytest.param(torch.bfloat16, id="bf16")
FP16 = pytest.param(torch.float16, id="fp16")
FP64 = pytest.param(torch.float64, id="fp64")
FP32_TOL = 1e-5
BF16_TOL = {"loss": 2e-5, "residual": 2e-5, "grad": 4e-3}
TF32_TOL = 5e-3

# VGG-19 style layers: (name, channels, downsampling of the image side).
LAYERS = [("relu1_1", 64, 1), ("relu2_1", 128, 2), ("relu3_1", 256, 4), ("relu4_1", 512, 8),
          ("relu5_1", 512, 16)]


def rel(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    assert torch.isfinite(out).all(), "non-finite values in output"
    den = ref.norm()
    return ((out - ref).norm() / (den if den > 0 else 1.0)).item()


def features(b, c, m, dtype=torch.float32, seed=0, gen=None):
    """Non-negative, ReLU-like features with random per-channel scales (never zeros)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    f = torch.rand(b, c, m, device=DEV, generator=g) * (0.25 + torch.rand(1, c, 1, device=DEV, generator=g))
    return f.to(dtype)


def target_for(f, seed=1):
    """A symmetric target: the Gram matrix of other random features, in the accumulation dtype."""
    b, c, m = f.shape
    other = features(b, c, m, torch.float64, seed=seed)
    return reference.gram(other).to(reference.accum_dtype(f.dtype))


def scale_for(c, m):
    return 1.0 / (4.0 * c * c * max(m, 1) ** 2)


def ref_all(f, a, scale, grad=1.0):
    f64, a64 = f.detach().double(), a.double()
    loss, res = reference.style_loss_forward(f64, a64, scale)
    g = torch.tensor(grad, dtype=torch.float64, device=f.device)
    dfeat = reference.style_loss_backward(g, res, f64, scale)
    return loss, res, dfeat


def check_op(f, a, scale, tol_loss, tol_res, tol_grad):
    loss_ref, res_ref, grad_ref = ref_all(f, a, scale, grad=0.75)
    loss, res = torch.ops.nst_fast.style_loss_forward(f, a, scale)
    acc = reference.accum_dtype(f.dtype)
    assert loss.dtype == acc and loss.dim() == 0
    assert res.dtype == acc and res.shape == res_ref.shape
    assert rel(loss, loss_ref) <= tol_loss
    assert rel(res, res_ref) <= tol_res
    gl = torch.tensor(0.75, device=DEV)
    dfeat = torch.ops.nst_fast.style_loss_backward(gl, res, f, scale)
    assert dfeat.dtype == f.dtype and dfeat.shape == f.shape
    assert dfeat.stride() == torch.empty_like(f).stride(), "gradient must keep the features' layout"
    assert rel(dfeat, grad_ref) <= tol_grad
    if f.dtype in (torch.bfloat16, torch.float16):
        # Rounded once from an fp32-accurate value: nearly every element is the exact
        # gradient rounded to the dtype (a residual truncated to tf32 misses ~7% in bf16).
        assert (dfeat != grad_ref.to(f.dtype)).float().mean().item() <= 0.01, "gradient not correctly rounded"
    g = torch.ops.nst_fast.gram(f)
    assert rel(g, reference.gram(f.double())) <= tol_res


def layer_shapes(sizes=(256, 512, 1024)):
    for s in sizes:
        for name, c, down in LAYERS:
            yield pytest.param(c, (s // down) ** 2, id=f"{name}@{s}")


# ---------------------------------------------------------------- VGG layer shapes
@pytest.mark.parametrize("c,m", list(layer_shapes()))
@pytest.mark.parametrize("b", [1, 4])
def test_layer_shapes_fp32(b, c, m):
    if b == 4 and m * c > 64 * 512 * 512:
        pytest.skip("B=4 at 1024 px relu1_1 covered by B=1 (memory/time)")
    f = features(b, c, m, seed=b * 1000 + c)
    a = target_for(f, seed=7 + c)
    check_op(f, a, scale_for(c, m), FP32_TOL, FP32_TOL, FP32_TOL)


@pytest.mark.parametrize("c,m", list(layer_shapes((256, 512))))
@pytest.mark.parametrize("b", [1, 4])
def test_layer_shapes_bf16(b, c, m):
    f = features(b, c, m, torch.bfloat16, seed=b * 1000 + c + 1)
    a = target_for(f, seed=9 + c)
    check_op(f, a, scale_for(c, m), BF16_TOL["loss"], BF16_TOL["residual"], BF16_TOL["grad"])


@pytest.fixture
def allow_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("c,m", list(layer_shapes((512,))) + [pytest.param(65, 97, id="odd")])
@pytest.mark.parametrize("channels_last", [False, True])
def test_layer_shapes_tf32_when_allowed(allow_tf32, c, m, channels_last):
    f = features(1, c, m, seed=c + 5)
    if channels_last:
        f = f.transpose(1, 2).contiguous().transpose(1, 2)
    a, s = target_for(f, seed=13 + c), scale_for(c, m)
    check_op(f, a, s, TF32_TOL, TF32_TOL, TF32_TOL)
    _, res_tf32 = torch.ops.nst_fast.style_loss_forward(f, a, s)
    torch.backends.cuda.matmul.allow_tf32 = False
    _, res_exact = torch.ops.nst_fast.style_loss_forward(f, a, s)
    ref = ref_all(f, a, s)[1]
    # The switch took effect: TF32 rounding is far above the exact kernel's error.
    assert rel(res_tf32, res_exact) > 10 * rel(res_exact, ref)


# ---------------------------------------------------------------- odd shapes and layouts
@pytest.mark.parametrize("c", [1, 3, 65, 130])
@pytest.mark.parametrize("m", [1, 97, 1025])
@pytest.mark.parametrize("b", [1, 3])
def test_odd_shapes_fp32(b, c, m):
    f = features(b, c, m, seed=c * 7 + m)
    a = target_for(f)
    check_op(f, a, scale_for(c, m), FP32_TOL, FP32_TOL, FP32_TOL)


@pytest.mark.parametrize("dtype", [BF16, FP16])
@pytest.mark.parametrize("c,m", [(3, 97), (65, 1025), (64, 4096)])
def test_odd_shapes_reduced(dtype, c, m):
    f = features(2, c, m, dtype, seed=c + m)
    a = target_for(f)
    # a gradient of order 1: with scale_for's 1/(4 C^2 M^2) it underflows float16's range
    check_op(f, a, 1.0 / (c * m), BF16_TOL["loss"], BF16_TOL["residual"], BF16_TOL["grad"])


def _layouts(b, c, m, dtype):
    base = features(b, 2 * c, m + 8, dtype, seed=11)
    yield "channel-slice", base[:, ::2, :m]  # stride(1) = 2 (m + 8), stride(2) = 1
    yield "offset", base[:, :c, 1 : m + 1]  # misaligned start: scalar loads
    yield "strided-m", features(b, c, 2 * m, dtype, seed=12)[:, :, ::2]  # neither: copied
    cl = features(b, m, c, dtype, seed=13).transpose(1, 2)  # memory (B, M, C)
    yield "channels-last", cl
    yield "channels-last-slice", features(b, m, c + 4, dtype, seed=14)[:, :, 2 : c + 2].transpose(1, 2)
    yield "batch-slice", features(2 * b, c, m, dtype, seed=15)[::2]


@pytest.mark.parametrize("dtype", [FP32, BF16])
@pytest.mark.parametrize("b,c,m", [(2, 64, 4096), (1, 65, 97), (3, 128, 1024), (1, 512, 256)])
def test_layouts(dtype, b, c, m):
    tols = (FP32_TOL,) * 3 if dtype == torch.float32 else (
        BF16_TOL["loss"], BF16_TOL["residual"], BF16_TOL["grad"])
    for name, f in _layouts(b, c, m, dtype):
        assert f.shape == (b, c, m), name
        a = target_for(f.contiguous())
        try:
            check_op(f, a, scale_for(c, m), *tols)
        except AssertionError as exc:
            raise AssertionError(f"layout {name}: {exc}") from exc


@pytest.mark.parametrize("env", [{"NST_FAST_CUDA_ASYNC": "0"}, {"NST_FAST_SPLITK_PER_SM": "1"},
                                 {"NST_FAST_SPLITK_PER_SM": "16"}, {"NST_FAST_CUDA_RESIDENT": "0"},
                                 {"NST_FAST_CUDA_RESIDENT": "256"}],
                         ids=["sync", "splitk1", "splitk16", "not_resident", "resident256"])
@pytest.mark.parametrize("dtype", [FP32, BF16, FP16])
def test_kernel_variants(monkeypatch, env, dtype):
    """The A/B switches the benchmark uses compute the same function."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    tols = (FP32_TOL,) * 3 if dtype == torch.float32 else (
        BF16_TOL["loss"], BF16_TOL["residual"], BF16_TOL["grad"])
    for c, m in [(64, 16384), (512, 1024), (130, 1000)]:
        f = features(2, c, m, dtype, seed=c + 5)
        a = target_for(f)
        scale = scale_for(c, m) if dtype != torch.float16 else 1.0 / (c * m)  # float16's range
        check_op(f, a, scale, *tols)
        cl = f.transpose(1, 2).contiguous().transpose(1, 2)
        check_op(cl, a, scale, *tols)


def test_channels_last_4d_through_public_api():
    x = features(2, 64, 32 * 32, seed=21).reshape(2, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    a = target_for(x.detach().flatten(2).contiguous())
    s = scale_for(64, 1024)
    loss = ops.style_loss(x, a[0], s)  # (C, C) target, broadcast over the batch
    loss.backward()
    loss_ref, _, grad_ref = ref_all(x.detach().flatten(2), a[:1].expand(2, -1, -1), s)
    assert rel(loss, loss_ref) <= FP32_TOL
    assert rel(x.grad.flatten(2), grad_ref) <= FP32_TOL
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_target_batch_stride_zero():
    f = features(4, 128, 1024, seed=31)
    a = target_for(f[:1]).expand(4, -1, -1)
    assert a.stride(0) == 0
    check_op(f, a, scale_for(128, 1024), FP32_TOL, FP32_TOL, FP32_TOL)


def test_public_entry_points_and_autograd():
    f = features(2, 96, 777, seed=41).requires_grad_(True)
    a = target_for(f.detach())
    s = scale_for(96, 777)
    loss = ops.style_loss(f, a, s)
    (grad,) = torch.autograd.grad(loss * 0.5, f)
    loss_ref, _, grad_ref = ref_all(f, a, s, grad=0.5)
    assert rel(loss, loss_ref) <= FP32_TOL
    assert rel(grad, grad_ref) <= FP32_TOL
    assert rel(ops.gram(f.detach()), reference.gram(f.detach().double())) <= FP32_TOL


def test_repeatable():
    f = features(1, 256, 16384, seed=51)
    a = target_for(f)
    l1, d1 = torch.ops.nst_fast.style_loss_forward(f, a, 1e-6)
    l2, d2 = torch.ops.nst_fast.style_loss_forward(f, a, 1e-6)
    # atomics may reorder fp32 sums: equal to rounding, not necessarily bit-equal
    assert rel(d1, d2) <= 1e-6 and rel(l1, l2) <= 1e-6


def test_empty_and_degenerate():
    f = torch.empty(2, 8, 0, device=DEV)
    a = target_for(features(2, 8, 5))
    loss, res = torch.ops.nst_fast.style_loss_forward(f, a, 0.5)
    assert torch.allclose(res, -a) and torch.allclose(loss, 0.5 * a.square().sum())


# ---------------------------------------------------------------- float64, gradcheck, opcheck
def test_float64_path():
    f = features(2, 33, 211, torch.float64, seed=61)
    a = target_for(f)
    check_op(f, a, scale_for(33, 211), 1e-12, 1e-12, 1e-12)


@pytest.mark.parametrize("layout", ["contiguous", "channels-last"])
def test_gradcheck_float64(layout):
    f = features(2, 5, 7, torch.float64, seed=71)
    if layout == "channels-last":
        f = f.transpose(1, 2).contiguous().transpose(1, 2)
    f.requires_grad_(True)
    a = target_for(f.detach())
    assert torch.autograd.gradcheck(lambda x: ops.style_loss(x, a, 0.01), (f,))


@pytest.mark.parametrize("dtype", [FP32, BF16, FP64])
@pytest.mark.parametrize("cl", [False, True])
def test_opcheck(dtype, cl):
    f = features(2, 24, 40, dtype, seed=81)
    if cl:
        f = f.transpose(1, 2).contiguous().transpose(1, 2)
    a = target_for(f)
    res = torch.ops.nst_fast.style_loss_forward(f, a, 0.1)[1]
    gl = torch.tensor(1.5, device=DEV, dtype=res.dtype)
    torch.library.opcheck(torch.ops.nst_fast.gram.default, (f,))
    torch.library.opcheck(torch.ops.nst_fast.style_loss_forward.default,
                          (f.detach().requires_grad_(dtype != torch.bfloat16), a, 0.1))
    torch.library.opcheck(torch.ops.nst_fast.style_loss_backward.default, (gl, res, f, 0.1))


# ---------------------------------------------------------------- CUDA graphs, compile, autocast
def test_cuda_graph_capture_and_replay():
    b, c, m, s = 2, 128, 4096, scale_for(128, 4096)
    static_f = features(b, c, m, seed=91)
    static_a = target_for(static_f)
    static_g = torch.tensor(1.25, device=DEV)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up outside capture
            loss, res = torch.ops.nst_fast.style_loss_forward(static_f, static_a, s)
            torch.ops.nst_fast.style_loss_backward(static_g, res, static_f, s)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, res = torch.ops.nst_fast.style_loss_forward(static_f, static_a, s)
        dfeat = torch.ops.nst_fast.style_loss_backward(static_g, res, static_f, s)
    for seed in (92, 93, 94):
        new_f = features(b, c, m, seed=seed)
        static_f.copy_(new_f)
        static_a.copy_(target_for(new_f, seed=seed + 100))
        static_g.fill_(0.5 + seed % 3)
        graph.replay()
        torch.cuda.synchronize()
        loss_ref, res_ref, grad_ref = ref_all(new_f, static_a, s, grad=0.5 + seed % 3)
        assert rel(loss, loss_ref) <= FP32_TOL
        assert rel(res, res_ref) <= FP32_TOL
        assert rel(dfeat, grad_ref) <= FP32_TOL


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    s = scale_for(64, 2048)

    def step(x, a):
        return ops.style_loss(x, a, s) * 3.0 + 1.0

    compiled = torch.compile(step, fullgraph=True)
    for seed in (101, 102):
        f = features(2, 64, 2048, seed=seed).requires_grad_(True)
        a = target_for(f.detach(), seed=seed + 1)
        out = compiled(f, a)
        out.backward()
        loss_ref, _, grad_ref = ref_all(f, a, s, grad=3.0)
        assert rel(out - 1.0, 3.0 * loss_ref) <= FP32_TOL
        assert rel(f.grad, grad_ref) <= FP32_TOL


def test_torch_compile_fullgraph_raw_op():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def fwd(x, a):
        loss, _ = torch.ops.nst_fast.style_loss_forward(x, a, 0.01)
        return loss

    f = features(1, 32, 300, seed=111).requires_grad_(True)
    a = target_for(f.detach())
    fwd(f, a).backward()
    loss_ref, _, grad_ref = ref_all(f, a, 0.01)
    assert rel(f.grad, grad_ref) <= FP32_TOL


def test_autocast_keeps_residual_fp32():
    b, c, m = 1, 64, 4096
    f = features(b, c, m, seed=121)
    g64 = reference.gram(f.double())
    # target very close to G: the residual is small next to G itself
    noise = torch.randn(b, c, c, device=DEV, dtype=torch.float64) * 1e-2
    a = (g64 * (1 + noise + noise.transpose(1, 2))).float()
    res_ref = g64 - a.double()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, res = torch.ops.nst_fast.style_loss_forward(f, a, 1.0)
        naive = torch.bmm(f, f.transpose(1, 2))
        naive_res = naive.float() - a
        loss_api = ops.style_loss(f.bfloat16(), a, 1.0)
    assert naive.dtype == torch.bfloat16  # the plain mm really runs in bf16 here
    assert res.dtype == torch.float32 and loss.dtype == torch.float32
    assert rel(res, res_ref) <= 1e-4
    assert rel(naive_res, res_ref) > 1e-2, "autocast bf16 mm should destroy the residual"
    assert loss_api.dtype == torch.float32
    assert rel(loss_api, reference.style_loss_forward(f.bfloat16().double(), a.double(), 1.0)[0]) <= 1e-3


# ---------------------------------------------------------------- the ReLU-fused backward
def relu_case(b, c, m, dtype, seed, channels_last=False):
    """ReLU-like features with about a third zeroed, a residual, a gradient from above."""
    f = features(b, c, m, dtype, seed=seed)
    g = torch.Generator(device=DEV).manual_seed(seed + 1)
    f[torch.rand(f.shape, device=DEV, generator=g) < 0.3] = 0
    if channels_last:
        f = f.transpose(1, 2).contiguous().transpose(1, 2)
    res = torch.ops.nst_fast.style_loss_forward(f, target_for(f), scale_for(c, m))[1]
    upstream = (torch.randn(f.shape, device=DEV, generator=g) * 1e-3).to(dtype)
    return f, res, upstream


@pytest.mark.parametrize("dtype", [FP32, BF16, FP16, FP64])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("c,m", [(64, 4096), (200, 97), (3, 1)])
def test_relu_backward_equals_the_separate_ops(dtype, channels_last, c, m):
    """style_loss_relu_backward = style_loss_backward, an add and threshold_backward, bit
    for bit; the gradient from above in the features' layout or another (copied first)."""
    f, res, upstream = relu_case(2, c, m, dtype, seed=c + m, channels_last=channels_last)
    gl, s = torch.tensor(0.75, device=DEV, dtype=res.dtype), scale_for(c, m)
    plain = torch.ops.nst_fast.style_loss_backward(gl, res, f, s)
    other_layout = upstream.transpose(1, 2).contiguous().transpose(1, 2) if not channels_last else upstream.contiguous()
    for up in (upstream, other_layout):
        got = torch.ops.nst_fast.style_loss_relu_backward(gl, res, f, s, up)
        assert got.stride() == f.stride()
        assert torch.equal(got, torch.ops.aten.threshold_backward(plain + up, f, 0))
    got = torch.ops.nst_fast.style_loss_relu_backward(gl, res, f, s, None)
    assert torch.equal(got, torch.ops.aten.threshold_backward(plain, f, 0))
    torch.library.opcheck(torch.ops.nst_fast.style_loss_relu_backward.default, (gl, res, f, s, upstream))


@pytest.mark.parametrize("dtype", [FP32, BF16])
def test_relu_backward_keeps_subnormals(dtype):
    """The epilogue's add and mask keep subnormal values, as ATen's add and
    threshold_backward do, although the extension is built with --use_fast_math."""
    c, m = 64, 4096
    f, res, upstream = relu_case(1, c, m, dtype, seed=7)
    f[0, :, :64] = 1e-39  # positive subnormals: the ReLU passed them, so their gradient stays
    upstream[0, :, 64:128] = 1e-39
    gl, s = torch.tensor(1e-30, device=DEV), scale_for(c, m)  # dF far below the subnormal upstream
    plain = torch.ops.nst_fast.style_loss_backward(gl, res, f, s)
    got = torch.ops.nst_fast.style_loss_relu_backward(gl, res, f, s, upstream)
    assert torch.equal(got, torch.ops.aten.threshold_backward(plain + upstream, f, 0))
    assert (got[0, :, :64] != 0).any()


def test_relu_backward_graph_capture_and_replay():
    c, m = 128, 4096
    f, res, upstream = relu_case(1, c, m, torch.bfloat16, seed=95, channels_last=True)
    gl, s = torch.tensor(1.0, device=DEV), scale_for(c, m)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.ops.nst_fast.style_loss_relu_backward(gl, res, f, s, upstream)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.nst_fast.style_loss_relu_backward(gl, res, f, s, upstream)
    for seed in (96, 97):
        new_f, new_res, new_up = relu_case(1, c, m, torch.bfloat16, seed=seed, channels_last=True)
        f.copy_(new_f)
        res.copy_(new_res)
        upstream.copy_(new_up)
        gl.fill_(seed % 3 + 0.5)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, torch.ops.nst_fast.style_loss_relu_backward(gl, res, f, s, upstream))


# ---------------------------------------------------------------- errors
def test_errors():
    f = features(2, 16, 64)
    a = target_for(f)
    with pytest.raises(RuntimeError, match="is on"):
        torch.ops.nst_fast.style_loss_forward(f, a.cpu(), 1.0)
    with pytest.raises(RuntimeError, match="must be"):
        torch.ops.nst_fast.style_loss_forward(f, a.double(), 1.0)
    with pytest.raises(RuntimeError, match=r"\(B, C, C\)"):
        torch.ops.nst_fast.style_loss_forward(f, a[:, :8, :8], 1.0)
    with pytest.raises(RuntimeError, match="batch"):
        torch.ops.nst_fast.style_loss_forward(f, a[:1], 1.0)
    with pytest.raises(RuntimeError, match=r"\(B, C, M\)"):
        torch.ops.nst_fast.style_loss_forward(f[0], a, 1.0)
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16"):
        torch.ops.nst_fast.gram(f.to(torch.int32))
    res = torch.ops.nst_fast.style_loss_forward(f, a, 1.0)[1]
    with pytest.raises(RuntimeError, match="one value"):
        torch.ops.nst_fast.style_loss_backward(torch.ones(2, device=DEV), res, f, 1.0)
    with pytest.raises(RuntimeError, match="is on"):
        torch.ops.nst_fast.style_loss_backward(torch.ones((), device=DEV), res.cpu(), f, 1.0)
    with pytest.raises(RuntimeError, match="grad_loss is on"):
        torch.ops.nst_fast.style_loss_backward(torch.ones(()), res, f, 1.0)
    if torch.cuda.device_count() > 1:
        with pytest.raises(RuntimeError, match="is on"):
            torch.ops.nst_fast.style_loss_forward(f, a.to("cuda:1"), 1.0)


def test_the_build_has_code_for_this_gpu():
    major, minor = torch.cuda.get_device_capability()
    image = torch.ops.nst_fast.cuda_kernel_image(torch.cuda.current_device())
    assert 0 < image <= 10 * major + minor
    assert backend.uses_extension("cuda") and backend.describe()["cuda"] == "extension"
