"""The style loss fused with the ReLU before it (ops.relu_style_loss, the op
style_loss_relu_backward) against the ReLU and the style loss run separately."""
import pytest
import torch
from conftest import OpNames

from nst_fast.losses.gatys import GatysLoss, gram_target
from nst_fast.nets import vgg
from nst_fast.ops import backend, reference, style_loss as ops

DTYPES = [torch.float32, torch.bfloat16, torch.float64]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}
needs_extension = pytest.mark.skipif(not backend.extension_loaded(), reason="extension not built")


def _inputs(dtype, channels_last, seed=0, shape=(2, 8, 5, 7)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    other = torch.randn(shape[:2] + (shape[2] * shape[3] + 3,), generator=gen, dtype=torch.float64).relu()
    target = reference.gram(other).to(reference.accum_dtype(dtype))
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, target, upstream


def _run(fn, x0, target, upstream):
    """The loss, the activation and the gradient of x for loss * 0.7 + <activation, upstream>
    (upstream None: the loss alone, as at the network's deepest layer)."""
    x = x0.clone().requires_grad_(True)
    act, loss = fn(x * 1, target, 0.01)  # x * 1: the in-place ReLU needs a non-leaf
    total = loss * 0.7
    if upstream is not None:
        total = total + (act.double() * upstream.double()).sum()
    total.backward()
    return loss.detach(), act.detach(), x.grad


def _separately(x, target, scale):
    act = torch.relu(x)
    return act, ops.style_loss(act, target, scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_upstream", [True, False])
def test_equals_the_relu_and_style_loss_run_separately(op_backend, dtype, channels_last, with_upstream):
    x, target, upstream = _inputs(dtype, channels_last)
    want = _run(_separately, x, target, upstream if with_upstream else None)
    got = _run(ops.relu_style_loss, x, target, upstream if with_upstream else None)
    for w, g in zip(want, got):
        assert g.dtype == w.dtype
        if op_backend == "extension":  # rounded as the separate ops round: bit for bit
            assert torch.equal(g, w)
        else:  # autograd of the reference's Gram takes two products where the fused backward takes one
            assert ((g.double() - w.double()).norm() / w.double().norm()).item() <= TOL[dtype]
    masked = x <= 0
    assert masked.any() and (got[2][masked] == 0).all() and (got[2][~masked] != 0).any()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_op_against_reference(dtype, layout):
    b, c, m = 2, 65, 33
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(b, c, 2 * m, generator=gen, dtype=torch.float64).relu_()
    f = wide[:, :, ::2] if layout == "sliced" else wide[:, :, :m].contiguous()
    if layout == "channels_last":
        f = f.transpose(1, 2).contiguous().transpose(1, 2)
    f = f.to(dtype)
    residual = reference.gram(torch.randn(b, c, m, generator=gen, dtype=torch.float64)).to(
        reference.accum_dtype(dtype))
    upstream = torch.randn(b, c, m, generator=gen, dtype=torch.float64).to(dtype)  # contiguous: another layout
    grad_loss = torch.tensor(0.75, dtype=reference.accum_dtype(dtype))
    tol = TOL[dtype]
    for g in (upstream, None):
        want = reference.style_loss_relu_backward(grad_loss.double(), residual.double(), f.double(), 1e-3,
                                                  None if g is None else g.double())
        with_extension = backend.uses_extension("cpu")
        got = (torch.ops.nst_fast.style_loss_relu_backward(grad_loss, residual, f, 1e-3, g) if with_extension
               else reference.style_loss_relu_backward(grad_loss, residual, f, 1e-3, g))
        assert got.shape == f.shape and got.dtype == dtype
        assert (got[f <= 0] == 0).all() and (f <= 0).any()
        assert ((got.double() - want).norm() / want.norm()).item() <= tol


@needs_extension
def test_op_equals_the_ops_it_replaces():
    """The CPU op is exactly style_loss_backward, an add and threshold_backward, also
    where the activation is NaN (threshold_backward keeps that gradient)."""
    for dtype in DTYPES:
        x, target, upstream = _inputs(dtype, channels_last=True)
        f = x.relu().flatten(2)
        f[0, 0, 0] = float("nan")
        _, residual = torch.ops.nst_fast.style_loss_forward(f, target.expand(2, -1, -1), 0.01)
        g = upstream.contiguous(memory_format=torch.channels_last).flatten(2)
        grad_loss = torch.tensor(1.3, dtype=residual.dtype)
        style = torch.ops.nst_fast.style_loss_backward(grad_loss, residual, f, 0.01)
        want = torch.ops.aten.threshold_backward(style + g, f, 0)
        got = torch.ops.nst_fast.style_loss_relu_backward(grad_loss, residual, f, 0.01, g)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        assert got[0, 0, 0].isnan() and (got[0, 1:, 0][f[0, 1:, 0] <= 0] == 0).all()
        torch.testing.assert_close(torch.ops.nst_fast.style_loss_relu_backward(grad_loss, residual, f, 0.01, None),
                                   torch.ops.aten.threshold_backward(style, f, 0), rtol=0, atol=0, equal_nan=True)


@needs_extension
def test_opcheck():
    f = torch.rand(2, 5, 9, dtype=torch.float64) - 0.3
    target = reference.gram(torch.rand(2, 5, 11, dtype=torch.float64))
    _, residual = torch.ops.nst_fast.style_loss_forward(f, target, 0.5)
    grad_loss = torch.tensor(0.8, dtype=torch.float64)
    op = torch.ops.nst_fast.style_loss_relu_backward.default
    torch.library.opcheck(op, (grad_loss, residual, f, 0.5, torch.randn(2, 5, 9, dtype=torch.float64)))
    torch.library.opcheck(op, (grad_loss, residual, f, 0.5, None))


@needs_extension
@pytest.mark.parametrize("grad_features, message", [
    (torch.zeros(2, 5, 8), "shape \\[2, 5, 9\\]"),
    (torch.zeros(2, 5, 9, dtype=torch.float64), "must be Float"),
])
def test_clear_errors(grad_features, message):
    f = torch.rand(2, 5, 9)
    residual = torch.zeros(2, 5, 5)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.nst_fast.style_loss_relu_backward(torch.ones(()), residual, f, 1.0, grad_features)


def test_gradcheck_float64(op_backend):
    x, target, _ = _inputs(torch.float64, channels_last=False, shape=(1, 3, 2, 3))
    x = x.masked_fill(x.abs() < 0.1, 0.5)  # away from the ReLU's kink

    def fn(x):
        act, loss = ops.relu_style_loss(x * 1, target, 0.1)
        return act, loss

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),))


def _gatys(image, fused: bool):
    layers = {"relu1_1": 0.4, "relu2_1": 0.3, "relu3_1": 0.3}
    net = vgg.VGGFeatures(list(layers) + ["relu2_2"], vgg.random_state(0))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        style = net(torch.rand(1, 3, 20, 24, generator=gen))
        content = net(torch.rand(1, 3, 16, 20, generator=gen))
    hw = {n: content[n].shape[-2] * content[n].shape[-1] for n in layers}
    loss = GatysLoss(net, {"relu2_2": content["relu2_2"].clone()},
                     {n: gram_target(style[n], hw[n]) for n in layers}, {"relu2_2": 1.0}, layers,
                     alpha=1.0, beta=1e4, tv_weight=0.0)
    loss.fuse_relu = fused
    x = image.clone().requires_grad_(True)
    with OpNames() as seen:
        total, parts = loss(x)
        total.backward()
    return total.detach(), x.grad, seen.names


@pytest.mark.slow
def test_the_loss_runs_its_style_layers_fused(op_backend):
    image = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(6))
    total, grad, names = _gatys(image, True)
    want_total, want_grad, want_names = _gatys(image, False)
    assert torch.equal(total, want_total)
    fused_op = "nst_fast::style_loss_relu_backward"
    if op_backend == "reference":  # autograd of the reference's Gram takes two products, the fused backward one
        assert ((grad - want_grad).norm() / want_grad.norm()).item() <= 1e-5
    else:
        assert torch.equal(grad, want_grad)
        assert names.count(fused_op) == 3 and fused_op not in want_names
        # Per style layer an add and a threshold_backward fewer (relu2_2 keeps its own).
        assert want_names.count("aten::threshold_backward") - names.count("aten::threshold_backward") == 3
        assert len(want_names) - len(names) >= 6


def test_only_plain_gram_layers_at_in_place_relus_are_fused():
    net = vgg.VGGFeatures(["conv1_1", "relu1_1", "relu2_1", "pool2"], vgg.random_state(0))
    assert not net.tappable("relu1_1")  # in place it would overwrite conv1_1, a requested output
    assert net.tappable("relu2_1") and not net.tappable("pool2")
    target = torch.eye(128)
    loss = GatysLoss(net, {}, {"relu1_1": torch.eye(64), "relu2_1": target, "pool2": lambda f: f.sum()}, {},
                     {"relu1_1": 1.0, "relu2_1": 1.0, "pool2": 1.0}, 1.0, 1.0, 0.0)
    assert loss._fused_layers() == ["relu2_1"]
    loss.normalize_gradients = True
    assert loss._fused_layers() == []
    with pytest.raises(ValueError, match="no tap at pool2"):
        net(torch.rand(1, 3, 16, 16), {"pool2": lambda x: x})
