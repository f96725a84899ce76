"""The fused L-BFGS step's CUDA kernels, run on the CPU emulator, against the CPU op.

tests/cuda_emulator/lbfgs_harness.cpp runs csrc/cuda/lbfgs_kernels.cuh as
csrc/cuda/lbfgs_cuda.cu launches it, on a state written from an LBFGS object; every
tensor the step updates must match torch.ops.nst_fast.lbfgs_step on the CPU from the
same state, step after step: accepted and rejected steps, non-finite losses, the
ring of pairs wrapping, several blocks run in shuffled orders.
"""
import numpy as np
import pytest
import test_cuda_emulated as emulated
import torch

from nst_fast.ops import backend
from nst_fast.optimize.optim import LBFGS

pytestmark = [pytest.mark.slow,  # the CUDA kernels built with g++ and run on the CPU emulator
              pytest.mark.skipif(not backend.has_op_kernel("lbfgs_step", "cpu"),
                                 reason="the extension has no fused L-BFGS kernel to compare with")]

STATE = ("x", "loss", "grad", "x_a", "f_a", "g_a", "d", "t", "W", "WW", "valid", "idx", "steps", "accepted")
NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.bool: np.bool_, torch.int64: np.int64}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return emulated._build(tmp_path_factory.mktemp("lbfgs_emulator"), ["-O2"], "lbfgs_harness.cpp")


def _emulated_step(harness, directory, opt, x, loss, grad, seed):
    """One step of the CUDA kernels on the emulator -> the updated state, by name."""
    tensors = dict(opt.state_dict(), x=x.reshape(-1), loss=loss.reshape(()), grad=grad.reshape(-1))
    for name in STATE:
        tensors[name].contiguous().numpy().tofile(directory / name)
    dtype = "f64" if x.dtype == torch.float64 else "f32"
    cmd = [str(harness), f"dtype={dtype}", f"n={x.numel()}", f"h={opt.history}", f"dir={directory}",
           f"seed={seed}", f"lr={opt.lr}", f"c1={opt.c1}", f"backtrack={opt.backtrack}", f"eps={opt.eps}",
           f"max_step={opt.max_step}"]
    emulated.subprocess.run(cmd, check=True, capture_output=True)
    return {name: torch.from_numpy(np.fromfile(directory / name, dtype=NUMPY[tensors[name].dtype]))
            .reshape(tensors[name].shape) for name in STATE if name not in ("loss", "grad")}


def _barrier(v):  # non-finite for v <= 0, so long steps are rejected
    a = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    return (a * v ** 2).sum() - torch.log(v).sum()


def _quadratic(n, dtype):
    gen = torch.Generator().manual_seed(0)
    curvature = (torch.rand(n, generator=gen, dtype=torch.float64) * 100 + 0.01).to(dtype)
    b = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    return lambda v: (0.5 * curvature * v * v - b * v).sum()


@pytest.mark.parametrize("problem, dtype, n, history, steps, rtol", [
    ("quadratic", torch.float64, 3001, 3, 12, 1e-12),  # 3 blocks, a partial chunk, the ring wraps
    ("barrier", torch.float64, 8, 4, 25, 1e-12),       # rejected and non-finite points
    ("quadratic", torch.float32, 2500, 2, 10, 2e-5),
])
def test_emulated_cuda_step_matches_cpu_op(harness, tmp_path, problem, dtype, n, history, steps, rtol):
    f = _quadratic(n, dtype) if problem == "quadratic" else _barrier
    x = torch.full((n,), 3.0, dtype=dtype) if problem == "barrier" else torch.zeros(n, dtype=dtype)
    opt = LBFGS(x, history=history)
    assert opt.fused
    outcomes = set()
    for step in range(steps):
        xg = x.detach().requires_grad_(True)
        loss = f(xg)
        (grad,) = torch.autograd.grad(loss, xg)
        loss = loss.detach()
        emulated_state = _emulated_step(harness, tmp_path, opt, x, loss, grad, seed=step)
        accepted = opt.accepted.item()
        opt.step(x, loss, grad)
        outcomes.add((opt.accepted.item() > accepted, bool(torch.isfinite(loss))))
        expected = dict(opt.state_dict(), x=x)
        for name, got in emulated_state.items():
            want = expected[name]
            if want.dtype in (torch.bool, torch.int64):
                assert torch.equal(got, want), f"step {step}: {name}"
            else:
                scale = want.abs().max().clamp_min(1e-30)
                assert ((got - want).abs().max() / scale).item() <= rtol, f"step {step}: {name}"
    assert opt.valid.all()
    if problem == "barrier":
        assert (False, False) in outcomes and (True, True) in outcomes  # rejected non-finite, accepted
