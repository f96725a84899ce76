"""Optimisers for the image being stylised.

Each `step(x, loss, grad)` consumes exactly one evaluation (loss and grad at the
current x) and moves x in place to the next point to evaluate. Steps are
sync-free: only tensor ops on x's device, no `.item()` and no Python branch on a
device value, with all state allocated up front, so a whole step (together with
the forward and backward) can be captured in a CUDA graph.
"""
import torch

from ..ops import backend


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _Stateful:
    _STATE: tuple = ()

    def state_dict(self) -> dict:
        return {name: getattr(self, name).clone() for name in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        """A state_dict() of an optimiser like this one; an entry missing, or of another
        shape than this one's, raises ValueError before any is copied."""
        missing = [name for name in self._STATE if name not in state]
        if missing:
            raise ValueError(f"the optimiser state is missing {', '.join(missing)}")
        for name in self._STATE:
            have, saved = getattr(self, name).shape, state[name].shape
            if saved != have:
                raise ValueError(f"the optimiser's {name} has shape {tuple(saved)}, this run's {tuple(have)}")
        # In place, so tensors already captured in a CUDA graph stay valid.
        for name in self._STATE:
            getattr(self, name).copy_(state[name])


class LBFGS(_Stateful):
    """L-BFGS with one evaluation per step and a device-side backtracking safeguard.

    Each step evaluates the proposal x = x_a + t * d made by the previous step.
    A finite proposal meeting the Armijo condition is accepted: it becomes x_a,
    the curvature pair (s, y) enters the history, and a new direction d comes
    from the compact form of the L-BFGS matrix. Otherwise x_a is kept and t
    shrinks by `backtrack`, so huge or non-finite losses never get past x_a.
    `max_step` bounds the largest element of a proposed move t * d (a trust
    region: for an image in [0, 1] a move of more than ~1 per pixel is never useful).

    Where the extension has the kernel (`fused` True), a step is one op,
    torch.ops.nst_fast.lbfgs_step: four passes over the image instead of ~120 small
    ops, which on a GPU are ~120 kernel launches. `step_reference` is the same step
    in PyTorch ops, the fallback and the reference the tests hold the op to.
    """

    _STATE = ("x_a", "f_a", "g_a", "d", "t", "W", "WW", "valid", "idx", "steps", "accepted")

    def __init__(self, x: torch.Tensor, lr: float = 1.0, history: int = 10, c1: float = 1e-4,
                 backtrack: float = 0.5, eps: float = 1e-10, max_step: float = float("inf")):
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.lr, self.history, self.c1 = float(lr), int(history), float(c1)
        self.backtrack, self.eps, self.max_step = float(backtrack), float(eps), float(max_step)
        dtype, device, n = _compute_dtype(x), x.device, x.numel()

        def zeros(*shape, dtype=dtype):
            return torch.zeros(shape, dtype=dtype, device=device)

        # Last accepted point: x_a starts at x so a non-finite first loss leaves x where it is.
        self.x_a = x.detach().reshape(-1).to(dtype, copy=True)
        self.f_a, self.g_a = zeros(), zeros(n)
        self.d, self.t = zeros(n), zeros()
        # Ring buffer of curvature pairs: row k of W is s of slot k, row history + k its y;
        # slots never written stay zero. idx is the next slot to write.
        self.W = zeros(2 * self.history, n)
        self.WW = zeros(2 * self.history, 2 * self.history, dtype=torch.float64)  # W W^T, kept in step with W
        self.valid = zeros(self.history, dtype=torch.bool)
        self.idx = zeros(dtype=torch.long)
        self.steps = zeros(dtype=torch.long)      # evaluations consumed
        self.accepted = zeros(dtype=torch.long)   # evaluations accepted; 0 means "first step"
        self._slots = torch.arange(self.history, device=device)
        self._workspace = _fused_workspace(x, self.history)

    @property
    def fused(self) -> bool:
        """True if steps run the fused op (for x in the state's dtype, contiguous)."""
        return self._workspace is not None

    @property
    def S(self) -> torch.Tensor:
        return self.W[:self.history]

    @property
    def Y(self) -> torch.Tensor:
        return self.W[self.history:]

    def load_state_dict(self, state: dict) -> None:
        if "WW" not in state and "S" in state:  # saved before W replaced S and Y
            W = torch.cat([state["S"], state["Y"]]).to(self.W)
            state = {**state, "W": W, "WW": (W @ W.T).double()}
        super().load_state_dict(state)

    @torch.no_grad()
    def step(self, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> None:
        """loss (0-dim) and grad were evaluated at the current x; updates x in place to the next point to evaluate."""
        dtype = self.x_a.dtype
        if self._workspace is not None and x.dtype == dtype and grad.dtype == dtype and x.is_contiguous():
            # The image's gradient comes back channels-last from the network: one copy.
            grad = grad.detach().contiguous()
            torch.ops.nst_fast.lbfgs_step(
                x.view(-1), loss.detach().reshape(()).to(dtype), grad.view(-1), self.x_a, self.f_a,
                self.g_a, self.d, self.t, self.W, self.WW, self.valid, self.idx, self.steps, self.accepted,
                self._workspace, self.lr, self.c1, self.backtrack, self.eps, self.max_step)
            return
        self.step_reference(x, loss, grad)

    @torch.no_grad()
    def step_reference(self, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> None:
        """step() in PyTorch ops."""
        dtype = self.x_a.dtype
        xf = x.detach().reshape(-1).to(dtype)
        g = grad.detach().reshape(-1).to(dtype)
        f = loss.detach().reshape(()).to(dtype)

        first = self.accepted == 0
        finite = torch.isfinite(f) & torch.isfinite(g).all()
        armijo = f <= self.f_a + self.c1 * self.t * torch.dot(self.g_a, self.d)
        ok = finite & (first | armijo)

        # torch.where rather than multiplying by a mask: a rejected point may carry NaNs.
        s, y = xf - self.x_a, g - self.g_a
        push = ok & ~first & (torch.dot(y, s) > self.eps)
        rows = torch.cat([self.idx.view(1), self.idx.view(1) + self.history])
        pair = torch.where(push, torch.stack([s, y]), self.W.index_select(0, rows))
        self.W.index_copy_(0, rows, pair)
        inner = (self.W @ pair.T).double()
        self.WW.index_copy_(1, rows, inner)
        self.WW.index_copy_(0, rows, inner.T)
        self.valid.logical_or_(push & (self._slots == self.idx))
        self.idx.copy_(torch.where(push, (self.idx + 1) % self.history, self.idx))

        self.x_a.copy_(torch.where(ok, xf, self.x_a))
        self.f_a.copy_(torch.where(ok, f, self.f_a))
        self.g_a.copy_(torch.where(ok, g, self.g_a))

        # New direction from the accepted gradient (g_a is finite even when this point was rejected).
        g = self.g_a
        d = self._direction(g)
        t0 = torch.clamp(1.0 / g.abs().sum(), max=1.0) * self.lr
        reset = ~(torch.dot(g, d) < 0)  # not a descent direction (or NaN): fall back to steepest descent
        new_d = torch.where(reset, -g, d)
        new_t = torch.where(first | reset, t0, self.lr)
        new_t = torch.minimum(new_t, self.max_step / new_d.abs().max())
        self.d.copy_(torch.where(ok, new_d, self.d))
        self.t.copy_(torch.where(ok, new_t, self.t * self.backtrack))
        self.steps.add_(1)
        self.accepted.add_(ok.long())

        x.copy_((self.x_a + self.t * self.d).reshape(x.shape))

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """-H g in the compact form of Byrd, Nocedal and Schnabel (1994, eq. 3.1):

            H g = gamma g + S p + gamma Y q,  q = -R^-1 S'g,  p = R^-T ((D + gamma Y'Y) R^-1 S'g - gamma Y'g)

        with the pairs oldest first, R the upper triangle of S'Y and D its diagonal: the
        same direction as the two-loop recursion, from two passes over W (W g and W' c)
        instead of 4 * history vector operations. The history x history algebra runs in
        float64. Unwritten slots have zero rows in W; a unit diagonal in R keeps it invertible.
        """
        h = self.history
        order = (self.idx + self._slots) % h           # slots, oldest first
        from_order = (self._slots - self.idx) % h      # inverse permutation
        Wg = (self.W @ g).double()
        Sg, Yg = Wg[:h][order], Wg[h:][order]
        SY = self.WW[:h, h:][order][:, order]
        YY = self.WW[h:, h:][order][:, order]
        valid = self.valid[order]
        R = SY.triu() + torch.diag((~valid).double())
        gamma = torch.where(valid[-1], SY[-1, -1] / YY[-1, -1], 1.0)
        v = torch.linalg.solve_triangular(R, Sg[:, None], upper=True)
        rhs = SY.diagonal()[:, None] * v + gamma * (YY @ v - Yg[:, None])
        p = torch.linalg.solve_triangular(R.T, rhs, upper=False)
        coef = torch.cat([p[from_order], -gamma * v[from_order]]).reshape(-1).to(g.dtype)
        return -(gamma.to(g.dtype) * g + self.W.T @ coef)


def _fused_workspace(x: torch.Tensor, history: int):
    """The fused step's workspace, or None where it cannot run (no kernel, a long history)."""
    if x.dtype not in (torch.float32, torch.float64):
        return None
    size = _workspace_size(x.numel(), history, x.device)
    return None if size is None else torch.zeros(size, dtype=torch.float64, device=x.device)


def _workspace_size(n: int, history: int, device):
    """Elements (float64) of the fused step's workspace for n elements, or None where it
    cannot run (no kernel, a long history)."""
    device = torch.device(device)
    if not backend.runs_extension("lbfgs_step", device):
        return None
    size = torch.ops.nst_fast.lbfgs_workspace_size(n, history)
    return None if size < 0 else size


# history x history float64 matrices alive at once in LBFGS._direction: SY and YY, and R
# with the two it is summed from (measured: 5.0-5.4 of them beyond W W^T at histories
# of 2500-4000).
DIRECTION_MATRICES = 5


def lbfgs_bytes(n: int, history: int, device="cpu") -> int:
    """Peak bytes of an LBFGS over n float32 elements: what __init__ allocates (x_a, g_a,
    d, W's 2 * history rows, W W^T in float64, the slot flags and indices) and what a
    step adds to it (the fused step's workspace; a step in PyTorch ops, where no kernel
    takes this history, its history x history matrices). W W^T and those grow with the
    square of the history, whatever the image's size."""
    state = (2 * history + 3) * n * 4 + (2 * history) ** 2 * 8 + history * (1 + 8)
    try:
        workspace = _workspace_size(n, history, device)
    except RuntimeError:  # NST_FAST_BACKEND=extension where it cannot run: count the larger, PyTorch step
        workspace = None
    step = DIRECTION_MATRICES * history ** 2 * 8 if workspace is None else workspace * 8
    return state + step


class Adam(_Stateful):
    """Adam (as torch.optim.Adam, no weight decay) with its step count kept on the device.

    For a contiguous float32 x (`fused` True) a step is PyTorch's own fused Adam kernel,
    the one behind torch.optim.Adam(fused=True): three ops (with a copy of the
    channels-last gradient) instead of the 17 of `step_reference`, each a kernel
    launch on a GPU.
    """

    _STATE = ("m", "v", "steps")

    def __init__(self, x: torch.Tensor, lr: float = 0.02, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.eps = float(lr), float(eps)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.m = torch.zeros_like(x, memory_format=torch.preserve_format)
        self.v = torch.zeros_like(x, memory_format=torch.preserve_format)
        self.steps = torch.zeros((), dtype=_compute_dtype(x), device=x.device)
        # Its step counts are float32; the float64 runs of the tests take the PyTorch ops.
        self.fused = (x.dtype == torch.float32 and x.is_contiguous() and x.device.type in ("cpu", "cuda")
                      and hasattr(torch, "_fused_adam_"))

    @torch.no_grad()
    def step(self, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> None:
        """loss is unused; grad was evaluated at the current x, which is updated in place."""
        if self.fused and x.is_contiguous() and grad.dtype == x.dtype:
            self.steps.add_(1)
            # The fused kernel walks the tensors' memory: the gradient in x's layout.
            g = grad.detach().reshape(x.shape).contiguous()
            torch._fused_adam_([x], [g], [self.m], [self.v], [], [self.steps.view(1)], lr=self.lr,
                               beta1=self.beta1, beta2=self.beta2, weight_decay=0.0, eps=self.eps,
                               amsgrad=False, maximize=False)
            return
        self.step_reference(x, loss, grad)

    @torch.no_grad()
    def step_reference(self, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> None:
        """step() in PyTorch ops."""
        g = grad.detach().reshape(x.shape).to(x.dtype)
        self.steps.add_(1)
        self.m.lerp_(g, 1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        step_size = self.lr / (1 - self.beta1 ** self.steps)
        denom = self.v.sqrt() / (1 - self.beta2 ** self.steps).sqrt() + self.eps
        x.sub_((step_size * self.m / denom).to(x.dtype))


_OPTIMIZERS = {"lbfgs": LBFGS, "adam": Adam}


def make_optimizer(name: str, x: torch.Tensor, **kwargs):
    """Build the optimiser called `name` ("lbfgs" or "adam") for x."""
    try:
        cls = _OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(_OPTIMIZERS)}") from None
    return cls(x, **kwargs)
