"""The relu + 2x2 max pool CUDA kernels, run on the CPU emulator, against the separate
ReLU and max pool on the CPU, bit for bit.

tests/cuda_emulator/pool_harness.cpp runs csrc/cuda/relu_pool_kernels.cuh with the launch
plan csrc/cuda/relu_pool_cuda.cu uses: 16 bytes of channels per thread where the
layout allows it, one element otherwise (contiguous layouts, odd channel counts,
misaligned buffers), a grid smaller than the work, odd sizes with partial windows.
"""
import numpy as np
import pytest
import test_cuda_emulated as emulated
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.slow  # the CUDA kernels built with g++ and run on the CPU emulator

CL = torch.channels_last
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
BITS = {2: torch.int16, 4: torch.int32}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return emulated._build(tmp_path_factory.mktemp("pool_emulator"), ["-O2"], "pool_harness.cpp")


@pytest.fixture(scope="module")
def checked_harness(tmp_path_factory):
    """Built with AddressSanitizer: every buffer ends where its tensor does."""
    return emulated._build(tmp_path_factory.mktemp("pool_emulator_asan"), ["-O1", "-g", "-fsanitize=address"],
                           "pool_harness.cpp")


def _write(path, t, off):
    """off zero elements, then t's memory (t dense, so its extent is its numel)."""
    flat = t.as_strided((t.numel(),), (1,), t.storage_offset()).view(BITS[t.element_size()])
    np.concatenate([np.zeros(off, flat.numpy().dtype), flat.numpy()]).tofile(path)


def _read(path, like, off):
    raw = torch.from_numpy(np.fromfile(path, dtype=np.dtype(f"int{8 * like.element_size()}")))
    return raw.view(like.dtype)[off:].as_strided(like.shape, like.stride())


def _strides(t):
    return ",".join(map(str, t.stride()))


def _pooled_format(x):
    """The pooled tensor's layout (relu_pool_format in csrc/relu_pool.cpp)."""
    return CL if x.size(1) > 1 and x.stride(1) == 1 else torch.contiguous_format


def _pooled_layout(x):
    b, c, h, w = x.shape
    return torch.empty(b, c, h // 2, w // 2, dtype=x.dtype).contiguous(memory_format=_pooled_format(x))


def _launch(harness, args):
    done = emulated.subprocess.run([str(harness), *args], check=True, capture_output=True, text=True)
    return dict(kv.split("=") for kv in done.stdout.split())


def emulated_forward(harness, tmp_path, x, off=0, blocks=1 << 20, seed=0, extra=()):
    """-> (relu(x) as the kernel left x, pooled, the launch). extra: more harness arguments."""
    pooled = _pooled_layout(x)
    _write(tmp_path / "x", x, off)
    launch = _launch(harness, ["op=forward", f"dtype={_name(x)}", f"seed={seed}", f"off={off}", f"blocks={blocks}",
                               "size=" + ",".join(map(str, x.shape)), f"stride={_strides(x)}",
                               f"pstride={_strides(pooled)}", f"x={tmp_path / 'x'}", f"pooled={tmp_path / 'pooled'}",
                               *extra])
    return _read(tmp_path / "x", x, off), _read(tmp_path / "pooled", pooled, off), launch


def emulated_backward(harness, tmp_path, act, grad_pooled, grad_act, off=0, blocks=1 << 20, seed=0, extra=()):
    """-> (the gradient, the launch). grad_pooled and grad_act must be in the layouts the
    host side gives them (relu_pool_cuda.cu): the pooled layout and act's."""
    _write(tmp_path / "act", act, off)
    _write(tmp_path / "grad_pooled", grad_pooled, off)
    args = ["op=backward", f"dtype={_name(act)}", f"seed={seed}", f"off={off}", f"blocks={blocks}",
            "size=" + ",".join(map(str, act.shape)), f"stride={_strides(act)}", f"pstride={_strides(grad_pooled)}",
            f"act={tmp_path / 'act'}", f"grad_pooled={tmp_path / 'grad_pooled'}", f"out={tmp_path / 'out'}", *extra]
    if grad_act is not None:
        assert grad_act.stride() == act.stride()
        _write(tmp_path / "grad_act", grad_act, off)
        args.append(f"grad_act={tmp_path / 'grad_act'}")
    launch = _launch(harness, args)
    return _read(tmp_path / "out", act, off), launch


def _name(t):
    return {v: k for k, v in DTYPES.items()}[t.dtype]


def inputs(shape, dtype, layout, seed):
    """x with an all-zero window after the ReLU, a tie, NaN, subnormals and -0; the
    gradients, in the layouts the host side gives the kernel."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    x = torch.randn(shape, generator=g)
    if h >= 4 and w >= 4:
        x[:, :, :2, :2] = -1.0
        x[:, :, 2:4, 2:4] = 0.75
    x[0, 0, 0, -1] = float("nan")
    x[0, -1, -1, 0] = -0.0
    if dtype != torch.float16:  # float16's subnormals are normal floats: nothing to test there
        x[-1, 0, -1, -1] = 1e-39
        x[-1, -1, 0, 0] = -1e-39
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    x = x.to(dtype).contiguous(memory_format=fmt)
    grad_act = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=fmt)
    grad_pooled = torch.randn(b, c, h // 2, w // 2, generator=g).to(dtype)
    return x, grad_pooled.contiguous(memory_format=_pooled_format(x)), grad_act


def separately(x, grad_pooled, grad_act):
    """The ReLU's output, the pooled output and the gradient of x, by the CPU's modules."""
    x = x.clone().requires_grad_(True)
    act = torch.relu(x * 1)
    pooled = F.max_pool2d(act, 2, 2)
    total = (pooled * grad_pooled).sum()
    if grad_act is not None:
        total = total + (act * grad_act).sum()
    (grad,) = torch.autograd.grad(total, x)
    return act.detach(), pooled.detach(), grad


def exact(got, want):
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


SHAPES = [(2, 32, 8, 10), (1, 20, 7, 9), (1, 3, 5, 4), (1, 64, 6, 2), (2, 16, 2, 5), (1, 8, 3, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_forward_and_backward_equal_the_separate_ops(harness, tmp_path, dtype, layout, shape):
    x, grad_pooled, grad_act = inputs(shape, DTYPES[dtype], layout, seed=sum(shape))
    act, pooled, grad = separately(x, grad_pooled, grad_act)
    got_act, got_pooled, launch = emulated_forward(harness, tmp_path, x)
    exact(got_act, act)
    exact(got_pooled, pooled)
    got, launch_b = emulated_backward(harness, tmp_path, act, grad_pooled, grad_act)
    exact(got, grad)
    wide = 16 // x.element_size()
    packed = layout == "channels_last" and shape[1] > 1 and shape[1] % wide == 0
    assert int(launch["v"]) == int(launch_b["v"]) == (wide if packed else 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_without_a_gradient_from_elsewhere(harness, tmp_path, dtype):
    x, grad_pooled, _ = inputs((2, 32, 7, 6), DTYPES[dtype], "channels_last", seed=3)
    act, _, grad = separately(x, grad_pooled, None)
    got, launch = emulated_backward(harness, tmp_path, act, grad_pooled, None)
    exact(got, grad)
    assert int(launch["v"]) > 1
    assert (got[act <= 0] == 0).all() and (got != 0).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_buffers_take_one_channel_a_thread(harness, tmp_path, dtype):
    x, grad_pooled, grad_act = inputs((1, 32, 6, 8), DTYPES[dtype], "channels_last", seed=4)
    act, pooled, grad = separately(x, grad_pooled, grad_act)
    got_act, got_pooled, launch = emulated_forward(harness, tmp_path, x, off=1)
    exact(got_act, act)
    exact(got_pooled, pooled)
    got, launch_b = emulated_backward(harness, tmp_path, act, grad_pooled, grad_act, off=1)
    exact(got, grad)
    assert launch["v"] == launch_b["v"] == "1"


@pytest.mark.parametrize("blocks, seed", [(1, 0), (3, 1), (3, 2)])
def test_a_grid_smaller_than_the_work(harness, tmp_path, blocks, seed):
    x, grad_pooled, grad_act = inputs((2, 24, 18, 27), torch.float32, "channels_last", seed=5)
    act, pooled, grad = separately(x, grad_pooled, grad_act)
    got_act, got_pooled, launch = emulated_forward(harness, tmp_path, x, blocks=blocks, seed=seed)
    exact(got_pooled, pooled)
    exact(got_act, act)
    got, _ = emulated_backward(harness, tmp_path, act, grad_pooled, grad_act, blocks=blocks, seed=seed)
    exact(got, grad)
    assert launch["blocks"] == str(blocks)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout, shape", [("channels_last", (1, 16, 5, 7)), ("channels_last", (1, 20, 5, 7)),
                                           ("contiguous", (2, 3, 5, 3))])
def test_no_access_outside_the_tensors(checked_harness, tmp_path, dtype, layout, shape):
    x, grad_pooled, grad_act = inputs(shape, DTYPES[dtype], layout, seed=6)
    act, pooled, grad = separately(x, grad_pooled, grad_act)
    exact(emulated_forward(checked_harness, tmp_path, x)[1], pooled)
    exact(emulated_backward(checked_harness, tmp_path, act, grad_pooled, grad_act)[0], grad)
