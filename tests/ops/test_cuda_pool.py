"""The relu + 2x2 max pool ops on CUDA against the separate ReLU and max pool on CUDA,
bit for bit; capture in a CUDA graph; the network with the fusion on and off.

Skips (module level) where there is no GPU or the extension has no CUDA kernel.
"""
import pytest
import torch
from conftest import OpNames
from test_cuda_emulated_pool import exact, separately

from nst_fast.nets import vgg
from nst_fast.ops import backend, relu_pool as pooling

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not (torch.cuda.is_available() and backend.has_op_kernel("relu_max_pool2_backward", "cuda")),
    reason="needs a CUDA GPU and the nst_fast CUDA kernels")]

DEV = "cuda"
CL = torch.channels_last
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def cuda_inputs(shape, dtype, layout, seed):
    """Random x with ties, NaN, -0 and (but in float16) subnormals; the gradients."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(shape, device=DEV, generator=g)
    x[..., :2, :2] = 0.75  # a tie at a positive value: the first element wins
    x[0, 0, -1, -1] = float("nan")
    x[0, -1, 0, -1] = -0.0
    if dtype != torch.float16:
        x[-1, :, 2:4, 2:4] = 1e-39  # positive subnormals: a float instruction built with ftz sees zeros
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    b, c, h, w = shape
    grad_pooled = torch.randn(b, c, h // 2, w // 2, device=DEV, generator=g).to(dtype)
    grad_act = torch.randn(shape, device=DEV, generator=g)
    grad_act[..., 4:6, :] = 1e-39
    return (x.to(dtype).contiguous(memory_format=fmt), grad_pooled.contiguous(memory_format=fmt),
            grad_act.to(dtype).contiguous(memory_format=fmt))


def fused(x, grad_pooled, grad_act):
    act = x.clone()
    pooled = torch.ops.nst_fast.relu_max_pool2_(act)
    grad = torch.ops.nst_fast.relu_max_pool2_backward(grad_pooled, act, grad_act)
    return act, pooled, grad


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("shape", [(2, 64, 40, 34), (1, 20, 7, 9), (1, 3, 6, 5), (1, 512, 8, 8)])
@pytest.mark.parametrize("with_grad_act", [True, False], ids=["grad_act", "no_grad_act"])
def test_equals_the_separate_cuda_ops(dtype, layout, shape, with_grad_act):
    x, grad_pooled, grad_act = cuda_inputs(shape, dtype, layout, seed=sum(shape))
    grad_act = grad_act if with_grad_act else None
    want = separately(x, grad_pooled, grad_act)
    got = fused(x, grad_pooled, grad_act)
    for g, w in zip(got, want):
        exact(g, w)
    assert got[1].stride() == want[1].stride() and got[2].stride() == x.stride()


def test_other_layouts_of_the_gradients():
    x, grad_pooled, grad_act = cuda_inputs((1, 32, 10, 12), torch.bfloat16, "channels_last", seed=1)
    want = separately(x, grad_pooled, grad_act)[2]
    act = torch.relu(x)
    got = torch.ops.nst_fast.relu_max_pool2_backward(grad_pooled.contiguous(), act, grad_act.contiguous())
    exact(got, want)
    exact(torch.ops.nst_fast.relu_max_pool2_backward(grad_pooled[:, :, :, :], act[:, :, :, :].contiguous(),
                                                     grad_act), want)


def test_opcheck_and_float64():
    x, grad_pooled, grad_act = cuda_inputs((1, 16, 6, 8), torch.float32, "channels_last", seed=2)
    x[0, 0, -1, -1] = 1.0  # opcheck compares outputs without equal_nan
    torch.library.opcheck(torch.ops.nst_fast.relu_max_pool2_.default, (x.clone(),))
    act = torch.relu(x)
    torch.library.opcheck(torch.ops.nst_fast.relu_max_pool2_backward.default, (grad_pooled, act, grad_act))
    x64, gp64, ga64 = (t.double() for t in (x, grad_pooled, grad_act))
    for g, w in zip(fused(x64, gp64, ga64), separately(x64, gp64, ga64)):  # the separate ops inside
        exact(g, w)


def test_graph_capture_and_replay():
    x, grad_pooled, grad_act = cuda_inputs((1, 64, 32, 30), torch.bfloat16, "channels_last", seed=3)
    act = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fused(x, grad_pooled, grad_act)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pooled = torch.ops.nst_fast.relu_max_pool2_(act)
        grad = torch.ops.nst_fast.relu_max_pool2_backward(grad_pooled, act, grad_act)
    for seed in (4, 5):
        new = cuda_inputs((1, 64, 32, 30), torch.bfloat16, "channels_last", seed=seed)
        act.copy_(new[0]), grad_pooled.copy_(new[1]), grad_act.copy_(new[2])
        graph.replay()
        torch.cuda.synchronize()
        for g, w in zip((act, pooled, grad), separately(*new)):
            exact(g, w)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_the_network_runs_its_pools_fused(monkeypatch, autocast):
    net = vgg.VGGFeatures(["relu1_2", "relu4_1"], vgg.random_state(0)).to(DEV)
    image = torch.rand(1, 3, 64, 58, device=DEV, generator=torch.Generator(device=DEV).manual_seed(5))

    def run(fuse):
        monkeypatch.setattr(pooling, "FUSE", fuse)
        x = image.clone().requires_grad_(True)
        with OpNames() as seen, torch.autocast(DEV, dtype=torch.bfloat16, enabled=autocast):
            feats = net(x)
            sum(f.float().square().sum() for f in feats.values()).backward()
        return [f.detach() for f in feats.values()], x.grad, seen.names

    feats, grad, names = run(True)
    want_feats, want_grad, want_names = run(False)
    assert all(torch.equal(f, w) for f, w in zip(feats, want_feats)) and torch.equal(grad, want_grad)
    assert names.count("nst_fast::relu_max_pool2_") == names.count("nst_fast::relu_max_pool2_backward") == 3
    assert "aten::max_pool2d_with_indices" in want_names and "aten::max_pool2d_with_indices" not in names
