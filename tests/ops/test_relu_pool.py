"""The ReLU and the 2x2 max pool after it as one node (nst_fast/ops/relu_pool.py) against the
two modules run separately."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import OpNames

from nst_fast.nets import vgg
from nst_fast.ops import backend, reference, relu_pool as pooling

pytestmark = pytest.mark.skipif(not backend.has_op_kernel("relu_max_pool2_backward", "cpu"),
                                reason="extension not built")
CL = torch.channels_last


def _separately(x):
    act = torch.relu(x)
    return act, F.max_pool2d(act, 2, 2)


def _run(fn, x0, grad_pooled, grad_act):
    x = x0.clone().requires_grad_(True)
    act, pooled = fn(x * 1)  # x * 1: the in-place ReLU needs a non-leaf
    total = (pooled * grad_pooled).sum()
    if grad_act is not None:
        total = total + (act * grad_act).sum()
    total.backward()
    return act.detach(), pooled.detach(), x.grad


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x[:, :, :2, :2] = 0.0  # an all-zero window after the ReLU
    x[:, :, 2:4, 2:4] = 0.75  # a tie at a positive value: the first element wins
    x[0, 0, 2, 0] = float("nan")  # NaN wins its window and keeps its gradient
    b, c, h, w = shape
    return (x.contiguous(memory_format=CL), torch.randn(b, c, h // 2, w // 2, generator=g),
            torch.randn(shape, generator=g))


@pytest.mark.parametrize("shape", [(2, 32, 8, 10), (1, 20, 7, 9), (1, 3, 5, 4), (1, 64, 6, 2)])
@pytest.mark.parametrize("with_grad_act", [True, False])
def test_equals_the_relu_and_pool_run_separately(shape, with_grad_act):
    x, grad_pooled, grad_act = _inputs(shape, sum(shape))
    want = _run(_separately, x, grad_pooled, grad_act if with_grad_act else None)
    got = _run(pooling.relu_max_pool2, x, grad_pooled, grad_act if with_grad_act else None)
    for w, g in zip(want, got):  # bit for bit, NaN where the separate ops have NaN
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)
    assert got[2][0, 0, 2, 0] != 0 and (got[2] == 0).any()  # the NaN's window: its gradient goes there


@pytest.mark.parametrize("dtype,layout", [(torch.float32, "contiguous"), (torch.bfloat16, "channels_last"),
                                          (torch.float64, "channels_last")])
def test_other_layouts_and_dtypes_take_the_separate_ops(dtype, layout):
    x, grad_pooled, grad_act = _inputs((1, 16, 6, 8), 3)
    x = x.to(dtype).contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)
    act = x.relu()
    got = torch.ops.nst_fast.relu_max_pool2_backward(grad_pooled.to(dtype), act, grad_act.to(dtype))
    x = x.clone().requires_grad_(True)
    a, p = _separately(x * 1)
    ((p * grad_pooled.to(dtype)).sum() + (a * grad_act.to(dtype)).sum()).backward()
    torch.testing.assert_close(got, x.grad, rtol=0, atol=0, equal_nan=True)


def test_opcheck_and_errors():
    x, grad_pooled, grad_act = _inputs((1, 16, 6, 8), 4)
    act = x.relu()
    op = torch.ops.nst_fast.relu_max_pool2_backward.default
    torch.library.opcheck(op, (grad_pooled.contiguous(memory_format=CL), act, grad_act.contiguous(memory_format=CL)))
    torch.library.opcheck(op, (grad_pooled.contiguous(memory_format=CL), act, None))
    with pytest.raises(RuntimeError, match="H / 2, W / 2"):
        op(torch.zeros(1, 16, 2, 4), act, None)
    with pytest.raises(RuntimeError, match="act's shape and dtype"):
        op(grad_pooled, act, torch.zeros(1, 16, 6, 7))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_the_forward_op_on_the_cpu(layout):
    x = _inputs((2, 16, 7, 6), 5)[0]
    x = x.contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)
    act = x.clone()
    pooled = torch.ops.nst_fast.relu_max_pool2_(act)
    want_act, want_pooled = _separately(x)
    torch.testing.assert_close(act, want_act, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0, equal_nan=True)
    assert pooled.is_contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)
    # opcheck compares outputs without equal_nan: an input without NaN
    torch.library.opcheck(torch.ops.nst_fast.relu_max_pool2_.default, (torch.randn(1, 8, 5, 6),))
    with pytest.raises(RuntimeError, match="H, W >= 2"):
        torch.ops.nst_fast.relu_max_pool2_(torch.zeros(1, 4, 1, 6))


@pytest.mark.parametrize("with_grad_act", [True, False])
def test_the_reference_equals_the_ops(with_grad_act):
    x, grad_pooled, grad_act = _inputs((2, 32, 8, 10), 6)
    grad_act = grad_act if with_grad_act else None
    act, want_act = x.clone(), x.clone()
    pooled, want_pooled = torch.ops.nst_fast.relu_max_pool2_(act), reference.relu_max_pool2_(want_act)
    torch.testing.assert_close(act, want_act, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0, equal_nan=True)
    got = torch.ops.nst_fast.relu_max_pool2_backward(grad_pooled, act, grad_act)
    want = reference.relu_max_pool2_backward(grad_pooled, want_act, grad_act)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def _network_gradient(net, image, fuse, monkeypatch):
    monkeypatch.setattr(pooling, "FUSE", fuse)
    x = image.clone().requires_grad_(True)
    with OpNames() as seen:
        feats = net(x)
        sum(f.square().sum() for f in feats.values()).backward()
    return [f.detach() for f in feats.values()], x.grad, seen.names


def test_the_network_runs_its_max_pools_fused(monkeypatch):
    # relu1_2 requested: its gradient from the loss joins the pool's.
    net = vgg.VGGFeatures(["relu1_2", "relu3_1"], vgg.random_state(0))
    image = torch.rand(1, 3, 21, 26, generator=torch.Generator().manual_seed(5))
    feats, grad, names = _network_gradient(net, image, True, monkeypatch)
    want_feats, want_grad, want_names = _network_gradient(net, image, False, monkeypatch)
    assert all(torch.equal(f, w) for f, w in zip(feats, want_feats)) and torch.equal(grad, want_grad)
    assert names.count("nst_fast::relu_max_pool2_backward") == 2  # pool1, pool2
    assert "aten::max_pool2d_with_indices_backward" in want_names
    assert "aten::max_pool2d_with_indices_backward" not in names


def test_no_fusion_without_a_gradient_or_for_other_pools():
    relu, pool = torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(2, 2)
    x = torch.rand(1, 4, 4, 4).contiguous(memory_format=CL)
    assert not pooling.fits(relu, pool, x)  # no gradient needed: the plain modules
    x.requires_grad_(True)
    assert pooling.fits(relu, pool, x)
    assert not pooling.fits(relu, torch.nn.MaxPool2d(3, 2, ceil_mode=True), x)  # NIN's, AlexNet's pools
    assert not pooling.fits(relu, torch.nn.AvgPool2d(2, 2), x)
    assert not pooling.fits(torch.nn.ReLU(), pool, x)  # not in place: its input is a requested output


@pytest.mark.slow
@pytest.mark.parametrize("bits", ["256", "0"], ids=["avx2", "no_vectors"])
def test_narrower_cpus(bits):
    """The AVX2 loop, and the separate ops where neither vector loop runs, on this CPU:
    NST_FAST_CPU_WINDOWS narrows the choice for a fresh process."""
    env = dict(os.environ, NST_FAST_CPU_WINDOWS=bits)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{__file__}::test_equals_the_relu_and_pool_run_separately"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
