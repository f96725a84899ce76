import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nst_fast.ops import backend, reference
from nst_fast.optimize.optim import LBFGS, Adam, make_optimizer

FUSED_CPU = backend.has_op_kernel("lbfgs_step", "cpu")


@pytest.fixture(params=["fused", "reference"])
def path(request, monkeypatch):
    """Runs a test with the fused op (torch.ops.nst_fast.lbfgs_step) and with the
    PyTorch-ops step; the test's LBFGS objects are made after this."""
    if request.param == "fused" and not FUSED_CPU:
        pytest.skip("the extension has no fused L-BFGS kernel")
    if request.param == "reference":
        monkeypatch.setenv("NST_FAST_BACKEND", "reference")
    return request.param


def _reference_step(opt, x, loss, grad):
    """opt's step by nst_fast.ops.reference.lbfgs_step, the op's PyTorch-ops twin."""
    reference.lbfgs_step(x, loss, grad, opt.x_a, opt.f_a, opt.g_a, opt.d, opt.t, opt.W, opt.WW, opt.valid, opt.idx,
                         opt.steps, opt.accepted, opt.lr, opt.c1, opt.backtrack, opt.eps, opt.max_step)


def _lbfgs(path, x, **kwargs):
    opt = LBFGS(x, **kwargs)
    assert opt.fused == (path == "fused")
    return opt


class RefLBFGS:
    """Textbook version of the same algorithm: Python floats, ifs and lists."""

    def __init__(self, x, lr=1.0, history=10, c1=1e-4, backtrack=0.5, eps=1e-10):
        self.lr, self.history, self.c1, self.backtrack, self.eps = lr, history, c1, backtrack, eps
        self.x_a = x.detach().reshape(-1).clone()
        self.f_a = self.g_a = None
        self.d = torch.zeros_like(self.x_a)
        self.t = 0.0
        self.s, self.y, self.rho = [], [], []
        self.first = True
        self.rejections = 0

    def step(self, x, loss, grad):
        xf, g, f = x.detach().reshape(-1).clone(), grad.detach().reshape(-1).clone(), loss.item()
        ok = math.isfinite(f) and bool(torch.isfinite(g).all())
        if ok and not self.first:
            ok = f <= self.f_a + self.c1 * self.t * torch.dot(self.g_a, self.d).item()
        if ok:
            if not self.first:
                s, y = xf - self.x_a, g - self.g_a
                ys = torch.dot(y, s).item()
                if ys > self.eps:
                    self.s.append(s), self.y.append(y), self.rho.append(1.0 / ys)
                    if len(self.s) > self.history:
                        self.s.pop(0), self.y.pop(0), self.rho.pop(0)
            self.x_a, self.f_a, self.g_a = xf, f, g
            q, alphas = g.clone(), []
            for s, y, rho in zip(reversed(self.s), reversed(self.y), reversed(self.rho)):
                a = rho * torch.dot(s, q).item()
                q = q - a * y
                alphas.append(a)
            gamma = 1.0
            if self.s:
                gamma = torch.dot(self.s[-1], self.y[-1]).item() / torch.dot(self.y[-1], self.y[-1]).item()
            r = gamma * q
            for s, y, rho, a in zip(self.s, self.y, self.rho, reversed(alphas)):
                b = rho * torch.dot(y, r).item()
                r = r + (a - b) * s
            d = -r
            t0 = min(1.0, 1.0 / g.abs().sum().item()) * self.lr
            if not torch.dot(g, d).item() < 0:
                d, self.t = -g, t0
            else:
                self.t = t0 if self.first else self.lr
            self.d = d
            self.first = False
        else:
            self.rejections += 1
            self.t *= self.backtrack
        x.copy_((self.x_a + self.t * self.d).reshape(x.shape))


# ---- test problems (float64) ----

def _quadratic(n=20, cond=1e4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(cond), n, dtype=torch.float64)
    A = q @ torch.diag(eig) @ q.T
    centre = torch.randn(n, generator=gen, dtype=torch.float64)
    x0 = 3 * torch.randn(n, generator=gen, dtype=torch.float64)

    def f(x):  # minimum 0 at centre
        v = x.reshape(-1) - centre
        return 0.5 * v @ A @ v

    return f, x0


def _rosenbrock(x):
    v = x.reshape(-1)
    return (100 * (v[1:] - v[:-1] ** 2) ** 2 + (1 - v[:-1]) ** 2).sum()


def _barrier(x):
    # log(x) is NaN for x < 0 and -inf at 0, so overshooting steps produce non-finite losses.
    v = x.reshape(-1)
    a = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    return (a * v ** 2).sum() - torch.log(v).sum()


def _eval(f, x):
    x = x.detach().requires_grad_(True)
    loss = f(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def _run(opt, f, x, steps):
    """Iterates (proposals) and losses of `steps` evaluations; x is moved in place."""
    xs, losses = [], []
    for _ in range(steps):
        loss, grad = _eval(f, x)
        opt.step(x, loss, grad)
        xs.append(x.clone())
        losses.append(loss)
    return xs, torch.stack(losses)


def _assert_same_iterates(a, b, rtol):
    for i, (u, v) in enumerate(zip(a, b)):
        err = (u - v).abs().max().item()
        scale = max(v.abs().max().item(), 1e-300)
        assert err <= rtol * scale, f"iterate {i}: max error {err:.3g} vs scale {scale:.3g}"


def _run_lockstep(opt, ref, f, x, steps):
    """Runs opt for `steps` evaluations, handing each evaluation to ref too; returns opt's
    losses and the largest relative gap between the two proposals made from the same
    inputs. Lockstep keeps the rounding of one step from being amplified by the later
    ones (L-BFGS on Rosenbrock doubles a 1e-16 difference every few steps)."""
    losses, gap = [], 0.0
    for _ in range(steps):
        loss, grad = _eval(f, x)
        proposal = x.clone()
        ref.step(proposal, loss, grad)
        opt.step(x, loss, grad)
        gap = max(gap, ((x - proposal).abs().max() / proposal.abs().max().clamp_min(1e-300)).item())
        losses.append(loss)
    return torch.stack(losses), gap


# ---- LBFGS against the reference ----

def test_matches_reference_on_ill_conditioned_quadratic(path):
    f, x0 = _quadratic()
    x = x0.reshape(4, 5)  # any shape: the optimiser flattens
    losses, gap = _run_lockstep(_lbfgs(path, x, history=5), RefLBFGS(x.clone(), history=5), f, x, 40)
    assert gap <= 1e-13
    assert losses[-1] < 1e-3 * losses[0]


def test_matches_reference_on_rosenbrock_with_backtracking(path):
    x = torch.tensor([-1.2, 1.0] * 3, dtype=torch.float64)
    opt, ref = _lbfgs(path, x), RefLBFGS(x.clone())
    losses, gap = _run_lockstep(opt, ref, _rosenbrock, x, 40)
    assert gap <= 1e-13
    rejections = (opt.steps - opt.accepted).item()
    assert rejections == ref.rejections > 0
    assert losses[-1] < 1e-2 * losses[0]


def test_matches_reference_and_recovers_from_non_finite_losses(path):
    x = torch.full((8,), 3.0, dtype=torch.float64)
    opt, ref = _lbfgs(path, x, lr=1.0), RefLBFGS(x.clone(), lr=1.0)
    losses, gap = _run_lockstep(opt, ref, _barrier, x, 40)
    assert gap <= 1e-13
    assert not torch.isfinite(losses).all(), "the test should visit non-finite points"
    assert (opt.steps - opt.accepted).item() == ref.rejections > 0
    # recovered: the last accepted point is the minimiser, x_i = 1 / sqrt(2 i)
    a = torch.arange(1, 9, dtype=torch.float64)
    torch.testing.assert_close(opt.x_a, (2 * a).rsqrt(), rtol=1e-6, atol=0)
    assert torch.isfinite(losses[-1]) and torch.isfinite(x).all()


def test_direction_matches_two_loop_recursion_after_the_ring_wraps():
    gen = torch.Generator().manual_seed(1)
    n, history = 30, 4
    opt = LBFGS(torch.zeros(n, dtype=torch.float64), history=history)
    pairs = []
    for k in range(history + 3):  # 0..history-1 partly filled, then wrapped
        s = torch.randn(n, generator=gen, dtype=torch.float64)
        y = s + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)  # y's > 0
        slot = k % history
        opt.W[slot], opt.W[history + slot] = s, y
        opt.valid[slot] = True
        opt.idx.fill_((k + 1) % history)
        opt.WW.copy_(opt.W @ opt.W.T)
        pairs = (pairs + [(s, y)])[-history:]
        g = torch.randn(n, generator=gen, dtype=torch.float64)
        q, alphas = g.clone(), []
        for s_, y_ in reversed(pairs):
            alphas.append(torch.dot(s_, q) / torch.dot(y_, s_))
            q -= alphas[-1] * y_
        r = torch.dot(pairs[-1][0], pairs[-1][1]) / torch.dot(pairs[-1][1], pairs[-1][1]) * q
        for (s_, y_), a in zip(pairs, reversed(alphas)):
            r += (a - torch.dot(y_, r) / torch.dot(y_, s_)) * s_
        direction = reference.lbfgs_direction(g, opt.W, opt.WW, opt.valid, opt.idx)
        torch.testing.assert_close(direction, -r, rtol=1e-12, atol=1e-12)


def test_non_finite_first_point_leaves_x_in_place(path):
    x = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    opt = _lbfgs(path, x)
    for _ in range(3):
        loss, grad = _eval(_barrier, x)
        opt.step(x, loss, grad)
    assert torch.equal(x, torch.tensor([-1.0, 2.0], dtype=torch.float64))
    assert opt.accepted.item() == 0


def test_float32_and_non_contiguous_x():
    f, x0 = _quadratic(n=24, cond=1e2)
    x = x0.float().reshape(4, 6).t()  # non-contiguous
    assert not x.is_contiguous()
    opt = LBFGS(x)
    assert opt.x_a.dtype == torch.float32
    _, losses = _run(opt, lambda v: f(v.t().double()).float(), x, 30)
    assert losses[-1] < losses[0]
    assert torch.isfinite(x).all()


def _lockstep_quadratic(n, dtype, history, steps, seed=0, device="cpu"):
    """Fused and PyTorch-ops steps fed the same evaluations, each from the fused one's
    state -> the largest relative gap between their proposals, and the fused optimiser."""
    gen = torch.Generator().manual_seed(seed)
    curvature = (torch.rand(n, generator=gen, dtype=torch.float64) * 100 + 0.01).to(device, dtype)
    b = torch.randn(n, generator=gen, dtype=torch.float64).to(device, dtype)
    x = torch.zeros(n, dtype=dtype, device=device)
    fused, ref = LBFGS(x, history=history), LBFGS(x.clone(), history=history)
    assert fused.fused
    gap = 0.0
    for _ in range(steps):
        grad = curvature * x - b
        loss = (0.5 * curvature * x * x - b * x).sum()
        proposal = x.clone()
        ref.load_state_dict(fused.state_dict())
        _reference_step(ref, proposal, loss, grad)
        fused.step(x, loss, grad)
        gap = max(gap, ((x - proposal).abs().max() / proposal.abs().max()).item())
    return gap, fused


@pytest.mark.skipif(not FUSED_CPU, reason="the extension has no fused L-BFGS kernel")
@pytest.mark.parametrize("dtype, n, tol", [
    (torch.float64, 3001, 1e-12),       # several blocks, a partial last chunk
    (torch.float64, 1024 * 1024 + 37, 1e-12),  # more chunks than blocks: blocks loop
    (torch.float32, 5000, 1e-5),
])
@pytest.mark.slow
def test_fused_step_matches_the_reference_step(dtype, n, tol):
    gap, opt = _lockstep_quadratic(n, dtype, history=3, steps=12 if n > 10**6 else 25)
    assert gap <= tol
    assert opt.valid.all() and opt.accepted.item() > 3  # the ring wrapped


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and backend.has_op_kernel("lbfgs_step", "cuda")),
                    reason="needs CUDA and the fused L-BFGS CUDA kernel")
@pytest.mark.parametrize("dtype, n, tol", [
    (torch.float64, 3001, 1e-12),
    (torch.float64, 1024 * 1024 + 37, 1e-12),
    (torch.float32, 5000, 1e-5),
])
def test_fused_cuda_step_matches_the_reference_step(dtype, n, tol):
    gap, opt = _lockstep_quadratic(n, dtype, history=3, steps=12 if n > 10**6 else 25, device="cuda")
    assert gap <= tol
    assert opt.valid.all() and opt.accepted.item() > 3


@pytest.mark.skipif(not FUSED_CPU, reason="the extension has no fused L-BFGS kernel")
def test_fused_step_is_one_op():
    x = torch.randn(3, 64, 64)
    opt = LBFGS(x)
    loss, grad = (x * x).sum(), 2 * x
    with _CountOps() as ops:
        opt.step(x, loss, grad)
    work = [n for n in ops.names if n not in ("view", "reshape", "detach", "_unsafe_view")]
    assert work == ["lbfgs_step"]
    with _CountOps() as ops:
        _reference_step(opt, x, loss, grad)
    assert len(ops.names) > 50


@pytest.mark.skipif(not FUSED_CPU, reason="the extension has no fused L-BFGS kernel")
def test_long_history_and_other_layouts_take_the_pytorch_ops():
    assert torch.ops.nst_fast.lbfgs_workspace_size(100, 32) > 0
    assert torch.ops.nst_fast.lbfgs_workspace_size(100, 33) == -1
    assert not LBFGS(torch.zeros(10), history=33).fused
    f, x0 = _quadratic(n=24, cond=1e2)
    x = x0.reshape(4, 6).t()  # non-contiguous: step() falls back to the PyTorch ops
    opt = LBFGS(x, history=40)
    _, losses = _run(opt, lambda v: f(v.t()), x, 30)
    assert losses[-1] < 1e-3 * losses[0]


@pytest.mark.skipif(not FUSED_CPU, reason="the extension has no fused L-BFGS kernel")
def test_fused_op_rejects_a_wrong_state():
    x = torch.zeros(10)
    opt = LBFGS(x, history=3)
    args = [x, torch.zeros(()), torch.zeros(10), opt.x_a, opt.f_a, opt.g_a, opt.d, opt.t, opt.W, opt.WW,
            opt.valid, opt.idx, opt.steps, opt.accepted, opt._workspace, 1.0, 1e-4, 0.5, 1e-10, 1.0]
    bad = list(args)
    bad[8] = opt.W[:, :9]
    with pytest.raises(RuntimeError, match=r"W must be \(2 history, n\) = \(6, 10\)"):
        torch.ops.nst_fast.lbfgs_step(*bad)
    bad = list(args)
    bad[14] = opt._workspace[:5]
    with pytest.raises(RuntimeError, match="workspace must be float64"):
        torch.ops.nst_fast.lbfgs_step(*bad)
    bad = list(args)
    bad[2] = torch.zeros(10, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="grad must be contiguous with 10 elements of x's dtype"):
        torch.ops.nst_fast.lbfgs_step(*bad)
    torch.ops.nst_fast.lbfgs_step(*args)  # the unchanged arguments pass
    assert opt.steps.item() == 1


@pytest.mark.skipif(not FUSED_CPU, reason="the extension has no fused L-BFGS kernel")
def test_fused_op_passes_opcheck():
    x = torch.randn(10, generator=torch.Generator().manual_seed(0))
    opt = LBFGS(x, history=3)
    args = (x, (x * x).sum(), 2 * x, opt.x_a, opt.f_a, opt.g_a, opt.d, opt.t, opt.W, opt.WW, opt.valid, opt.idx,
            opt.steps, opt.accepted, opt._workspace, 1.0, 1e-4, 0.5, 1e-10, 1.0)
    torch.library.opcheck(torch.ops.nst_fast.lbfgs_step.default, args)


# ---- checkpointing ----

@pytest.mark.parametrize("cls", [LBFGS, Adam])
def test_state_dict_resume_is_exact(cls, path):
    n = 10
    x0 = torch.tensor([-1.2, 1.0] * 4, dtype=torch.float64)
    kwargs = {"history": 3} if cls is LBFGS else {}  # small history so the ring wraps

    x_full = x0.clone()
    full, _ = _run(cls(x_full, **kwargs), _rosenbrock, x_full, 2 * n)

    x = x0.clone()
    opt = cls(x, **kwargs)
    _run(opt, _rosenbrock, x, n)
    state, x_saved = opt.state_dict(), x.clone()
    _run(opt, _rosenbrock, x, 3)  # the saved state is a snapshot, not a live view

    x_resumed = x_saved.clone()
    resumed = cls(torch.zeros_like(x0), **kwargs)
    resumed.load_state_dict(state)
    second, _ = _run(resumed, _rosenbrock, x_resumed, n)
    for a, b in zip(second, full[n:]):
        assert torch.equal(a, b)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_loads_state_saved_with_separate_s_and_y():
    x = torch.tensor([-1.2, 1.0] * 4, dtype=torch.float64)
    opt = LBFGS(x, history=3)
    _run(opt, _rosenbrock, x, 10)
    state, x_saved = opt.state_dict(), x.clone()
    legacy = {k: v for k, v in state.items() if k not in ("W", "WW")}
    legacy.update(S=opt.S.clone(), Y=opt.Y.clone(), rho=torch.zeros(3, dtype=torch.float64))

    runs = []
    for saved in (state, legacy):
        x_resumed = x_saved.clone()
        resumed = LBFGS(torch.zeros_like(x), history=3)
        resumed.load_state_dict(saved)
        runs.append(_run(resumed, _rosenbrock, x_resumed, 5)[0])
    _assert_same_iterates(runs[1], runs[0], 1e-12)


def test_load_state_dict_rejects_missing_keys():
    opt = LBFGS(torch.zeros(3))
    with pytest.raises(ValueError, match="^the optimiser state is missing f_a, g_a, d, t, W, WW, valid, idx, steps, "
                                         "accepted$"):
        opt.load_state_dict({"x_a": torch.zeros(3)})


@pytest.mark.parametrize("cls", [LBFGS, Adam])
def test_load_state_dict_rejects_entries_of_another_shape_and_keeps_its_own(cls):
    x = torch.tensor([-1.2, 1.0] * 4, dtype=torch.float64)
    opt = cls(x.clone())
    _run(opt, _rosenbrock, x, 3)
    before = opt.state_dict()
    other = cls(torch.zeros(7, dtype=torch.float64)).state_dict()  # one value short
    name = "x_a" if cls is LBFGS else "m"
    with pytest.raises(ValueError, match=rf"^the optimiser's {name} has shape \(7,\), this run's \(8,\)$"):
        opt.load_state_dict(other)
    assert all(torch.equal(v, before[k]) for k, v in opt.state_dict().items())


# ---- no host synchronisation ----

def _raise(*args, **kwargs):
    raise AssertionError("host sync inside step()")


def test_step_never_syncs_on_cpu(monkeypatch, path):
    x = torch.tensor([-1.2, 1.0] * 3, dtype=torch.float64)
    opts = [_lbfgs(path, x.clone(), history=3), Adam(x.clone())]
    evals = []
    for opt in opts:
        xo = x.clone()
        for _ in range(30):  # enough to wrap the ring and to backtrack
            evals.append((opt, xo, *_eval(_rosenbrock, xo)))
            with monkeypatch.context() as m:
                for name in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy"):
                    m.setattr(torch.Tensor, name, _raise)
                with pytest.raises(AssertionError):  # the patch is live
                    bool(torch.tensor(True))
                opt.step(*evals[-1][1:])
    assert (opts[0].steps - opts[0].accepted).item() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["lbfgs", "adam"])
def test_step_never_syncs_on_cuda(name, path):
    x = torch.tensor([-1.2, 1.0] * 3, dtype=torch.float32, device="cuda")
    opt = make_optimizer(name, x, history=3) if name == "lbfgs" else make_optimizer(name, x)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):  # the mode is live
            x.sum().item()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(30):
        loss, grad = _eval(_rosenbrock, x)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step(x, loss, grad)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()


def _capture_step(opt, x, loss, grad):
    """opt.step(x, loss, grad) captured in a CUDA graph, after two warm-up steps on a
    side stream that are undone (the state restored, x untouched)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            snapshot = opt.state_dict()
            opt.step(x.clone(), loss, grad)
            opt.load_state_dict(snapshot)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step(x, loss, grad)
    return graph


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lbfgs_step_captures_in_cuda_graph(path):
    x0 = torch.tensor([-1.2, 1.0] * 3, dtype=torch.float64, device="cuda")

    def run_eager(steps):
        x = x0.clone()
        opt = LBFGS(x, history=3)
        for _ in range(steps):
            opt.step(x, *_eval(_rosenbrock, x))
        return x

    x = x0.clone()
    opt = LBFGS(x, history=3)
    assert opt.fused == (path == "fused" and backend.has_op_kernel("lbfgs_step", "cuda"))
    loss, grad = torch.zeros((), dtype=x.dtype, device="cuda"), torch.zeros_like(x)
    graph = _capture_step(opt, x, loss, grad)
    for _ in range(20):
        l_, g_ = _eval(_rosenbrock, x)
        loss.copy_(l_), grad.copy_(g_)
        graph.replay()
    torch.testing.assert_close(x, run_eager(20), rtol=1e-10, atol=1e-12)


# ---- Adam ----

def test_adam_matches_torch_adam():
    f, x0 = _quadratic()
    xa, xb = x0.clone(), x0.clone().requires_grad_(True)
    got, _ = _run(Adam(xa, lr=0.05, betas=(0.8, 0.99), eps=1e-6), f, xa, 40)
    ref = torch.optim.Adam([xb], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    want = []
    for _ in range(40):
        ref.zero_grad()
        f(xb).backward()
        ref.step()
        want.append(xb.detach().clone())
    _assert_same_iterates(got, want, 1e-6)


def _adam_runs(device, steps=40):
    """Adam's fused float32 step and torch.optim.Adam on the same quadratic -> iterates."""
    f, x0 = _quadratic()
    f32 = lambda v: f(v.double().cpu()).float()  # noqa: E731
    xa = x0.float().to(device)
    xb = xa.clone().requires_grad_(True)
    opt = Adam(xa, lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    assert opt.fused
    ref = torch.optim.Adam([xb], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    got, want = [], []
    for _ in range(steps):
        opt.step(xa, *_eval(f32, xa))
        got.append(xa.cpu().clone())
        ref.zero_grad()
        f32(xb).backward()
        ref.step()
        want.append(xb.detach().cpu().clone())
    return got, want


def test_fused_adam_matches_torch_adam_in_float32():
    got, want = _adam_runs("cpu")
    _assert_same_iterates(got, want, 1e-6)


def test_fused_adam_takes_a_channels_last_gradient_in_three_ops():
    x = torch.randn(1, 3, 16, 16)
    x_ref = x.clone()
    fused, ref = Adam(x), Adam(x_ref)
    grad = torch.randn(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with _CountOps() as ops:
        fused.step(x, None, grad)
    work = [n for n in ops.names if n not in ("view", "reshape", "detach", "_unsafe_view")]
    assert sorted(work) == ["_fused_adam_", "add_", "clone"]
    reference.adam_step(x_ref, grad, ref.m, ref.v, ref.steps, ref.lr, ref.beta1, ref.beta2, ref.eps)
    # Rounding differs by an ulp of x; a gradient read in the wrong layout would be off by the step, 0.02.
    torch.testing.assert_close(x, x_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_adam_on_cuda_matches_torch_adam_and_captures():
    got, want = _adam_runs("cuda")
    _assert_same_iterates(got, want, 1e-6)
    x = torch.randn(1000, device="cuda")
    opt, grad = Adam(x), torch.randn(1000, device="cuda")
    eager_x, eager = x.clone(), Adam(x.clone())
    graph = _capture_step(opt, x, None, grad)
    for _ in range(5):
        graph.replay()
        eager.step(eager_x, None, grad)
    torch.testing.assert_close(x, eager_x, rtol=1e-6, atol=1e-7)
    assert opt.steps.item() == 5


# ---- convergence ----

def test_lbfgs_converges_on_quadratic_and_beats_adam():
    # Without an exact line search L-BFGS has no finite termination, so 50 evaluations
    # give 1e6x on a condition number of 1e3 in 8 dimensions (the 20-dim, 1e4 one needs more).
    f, x0 = _quadratic(n=8, cond=1e3)
    x = x0.clone()
    _, losses = _run(LBFGS(x), f, x, 50)
    assert losses[-1] < losses[0] / 1e6, f"loss fell only from {losses[0]:.3g} to {losses[-1]:.3g}"

    xa = x0.clone()
    _, adam_losses = _run(Adam(xa, lr=0.1), f, xa, 50)
    assert losses[-1] < adam_losses[-1]


def test_make_optimizer():
    x = torch.zeros(4)
    assert isinstance(make_optimizer("lbfgs", x, history=3), LBFGS)
    assert isinstance(make_optimizer("Adam", x, lr=0.1), Adam)
    with pytest.raises(ValueError, match="lbfgs"):
        make_optimizer("sgd", x)
