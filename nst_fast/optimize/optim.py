"""Optimisers for the image being stylised.

Each `step(x, loss, grad)` consumes exactly one evaluation (loss and grad at the
current x) and moves x in place to the next point to evaluate. Steps are
sync-free: only tensor ops on x's device, no `.item()` and no Python branch on a
device value, with all state allocated up front, so a whole step (together with
the forward and backward) can be captured in a CUDA graph.
"""
import torch

from ..ops import adam, backend, lbfgs


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
    torch.ops.nst_fast.lbfgs_step (nst_fast/ops/lbfgs.py); elsewhere the same step in
    PyTorch ops, nst_fast.ops.reference.lbfgs_step, which the tests hold the op to.
    """

    # In the order of the op's arguments.
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
        self._workspace = lbfgs.new_workspace(x, self.history)

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
        lbfgs.lbfgs_step(x, loss, grad, *(getattr(self, name) for name in self._STATE), self._workspace, self.lr,
                         self.c1, self.backtrack, self.eps, self.max_step)


# history x history float64 matrices alive at once in reference.lbfgs_direction: SY and YY, and R
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
        workspace = lbfgs.workspace_size(n, history, device)
    except RuntimeError:  # NST_FAST_BACKEND=extension where it cannot run: count the larger, PyTorch step
        workspace = None
    step = DIRECTION_MATRICES * history ** 2 * 8 if workspace is None else workspace * 8
    return state + step


class Adam(_Stateful):
    """Adam (as torch.optim.Adam, no weight decay) with its step count kept on the device.

    For a contiguous float32 x (`fused` True) a step is PyTorch's own fused Adam kernel
    (nst_fast/ops/adam.py); elsewhere the same step in PyTorch ops,
    nst_fast.ops.reference.adam_step.
    """

    _STATE = ("m", "v", "steps")

    def __init__(self, x: torch.Tensor, lr: float = 0.02, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.eps = float(lr), float(eps)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.m = torch.zeros_like(x, memory_format=torch.preserve_format)
        self.v = torch.zeros_like(x, memory_format=torch.preserve_format)
        self.steps = torch.zeros((), dtype=_compute_dtype(x), device=x.device)

    @property
    def fused(self) -> bool:
        """True if steps run the fused kernel (for x contiguous, in the moments' dtype)."""
        return backend.runs_fused_adam(self.m)

    @torch.no_grad()
    def step(self, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> None:
        """loss is unused; grad was evaluated at the current x, which is updated in place."""
        adam.adam_step(x, grad, self.m, self.v, self.steps, self.lr, self.beta1, self.beta2, self.eps)


_OPTIMIZERS = {"lbfgs": LBFGS, "adam": Adam}


def make_optimizer(name: str, x: torch.Tensor, **kwargs):
    """Build the optimiser called `name` ("lbfgs" or "adam") for x."""
    try:
        cls = _OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(_OPTIMIZERS)}") from None
    return cls(x, **kwargs)
