"""Pure-PyTorch versions of every nst_fast op: the fallback where the compiled kernel
does not run (backend.runs_extension), and the oracle the tests hold the kernels to.

One function per op, named after it; csrc/register.cpp has the ops' schemas and
csrc/include/nst_fast/ their contracts. The style-loss ops take features (B, C, M)
and keep the Gram, residual and loss in float32 (float64 for float64 features),
whatever the feature dtype (style_loss.h).
"""
import torch
import torch.nn.functional as F


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram(features: torch.Tensor) -> torch.Tensor:
    """nst_fast::gram: G = F F^T per batch item."""
    f = features.to(accum_dtype(features.dtype))
    with torch.autocast(f.device.type, enabled=False):  # G - A must not be rounded to bf16
        return torch.bmm(f, f.transpose(1, 2))


def style_loss_forward(features, target, scale: float):
    """nst_fast::style_loss_forward -> (scale * sum(R^2), R) with the residual R = G - target."""
    residual = gram(features) - target
    return scale * residual.square().sum(), residual


def style_loss_backward(grad_loss, residual, features, scale: float):
    """nst_fast::style_loss_backward: the features' gradient, 4 scale grad_loss R F."""
    f = features.to(residual.dtype)
    with torch.autocast(f.device.type, enabled=False):
        return (4.0 * scale * grad_loss * torch.bmm(residual, f)).to(features.dtype)


def style_loss_relu_backward(grad_loss, residual, features, scale: float, grad_features=None):
    """nst_fast::style_loss_relu_backward: the backward of relu(x) = features with the
    style loss taken at features, where grad_features reaches them from the layers
    above (None: nothing does)."""
    grad = style_loss_backward(grad_loss, residual, features, scale)
    if grad_features is not None:
        grad = grad + grad_features
    return torch.ops.aten.threshold_backward(grad, features, 0)


def relu_max_pool2_(x: torch.Tensor) -> torch.Tensor:
    """nst_fast::relu_max_pool2_: the ReLU in place on x (B, C, H, W) -> the 2x2,
    stride-2 max pool of its output."""
    return F.max_pool2d(x.relu_(), 2, 2)


def relu_max_pool2_backward(grad_pooled, act, grad_act=None):
    """nst_fast::relu_max_pool2_backward: the gradient at the ReLU's input, where act is
    its output, grad_pooled reaches the pool's output and grad_act (None: nothing)
    reaches act from elsewhere. As autograd runs the two modules' backwards."""
    _, indices = F.max_pool2d(act, 2, 2, return_indices=True)
    grad = torch.ops.aten.max_pool2d_with_indices_backward(grad_pooled, act, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                           indices)
    if grad_act is not None:
        grad = grad + grad_act
    return torch.ops.aten.threshold_backward(grad, act, 0)


def conv3x3(x, weight, bias=None):
    """nst_fast::conv3x3_winograd's convolution by PyTorch's own: 3x3, stride 1, zero
    padding 1. (The op takes the weight's Winograd transform instead of the weight.)"""
    return F.conv2d(x, weight, bias, padding=1)


@torch.no_grad()
def lbfgs_step(x, loss, grad, x_a, f_a, g_a, d, t, W, WW, valid, idx, steps, accepted, lr: float, c1: float,
               backtrack: float, eps: float, max_step: float) -> None:
    """nst_fast::lbfgs_step (without its workspace): one L-BFGS step in place on the
    state of nst_fast.optimize.optim.LBFGS, which says what each tensor holds. loss and
    grad were evaluated at x, which is moved to the next point to evaluate."""
    history = valid.numel()
    slots = torch.arange(history, device=valid.device)
    dtype = x_a.dtype
    xf = x.detach().reshape(-1).to(dtype)
    g = grad.detach().reshape(-1).to(dtype)
    f = loss.detach().reshape(()).to(dtype)

    first = accepted == 0
    finite = torch.isfinite(f) & torch.isfinite(g).all()
    armijo = f <= f_a + c1 * t * torch.dot(g_a, d)
    ok = finite & (first | armijo)

    # torch.where rather than multiplying by a mask: a rejected point may carry NaNs.
    s, y = xf - x_a, g - g_a
    push = ok & ~first & (torch.dot(y, s) > eps)
    rows = torch.cat([idx.view(1), idx.view(1) + history])
    pair = torch.where(push, torch.stack([s, y]), W.index_select(0, rows))
    W.index_copy_(0, rows, pair)
    inner = (W @ pair.T).double()
    WW.index_copy_(1, rows, inner)
    WW.index_copy_(0, rows, inner.T)
    valid.logical_or_(push & (slots == idx))
    idx.copy_(torch.where(push, (idx + 1) % history, idx))

    x_a.copy_(torch.where(ok, xf, x_a))
    f_a.copy_(torch.where(ok, f, f_a))
    g_a.copy_(torch.where(ok, g, g_a))

    # New direction from the accepted gradient (g_a is finite even when this point was rejected).
    g = g_a
    direction = lbfgs_direction(g, W, WW, valid, idx)
    t0 = torch.clamp(1.0 / g.abs().sum(), max=1.0) * lr
    reset = ~(torch.dot(g, direction) < 0)  # not a descent direction (or NaN): fall back to steepest descent
    new_d = torch.where(reset, -g, direction)
    new_t = torch.where(first | reset, t0, lr)
    new_t = torch.minimum(new_t, max_step / new_d.abs().max())
    d.copy_(torch.where(ok, new_d, d))
    t.copy_(torch.where(ok, new_t, t * backtrack))
    steps.add_(1)
    accepted.add_(ok.long())

    x.copy_((x_a + t * d).reshape(x.shape))


def lbfgs_direction(g, W, WW, valid, idx) -> torch.Tensor:
    """lbfgs_step's direction, -H g, in the compact form of Byrd, Nocedal and Schnabel
    (1994, eq. 3.1):

        H g = gamma g + S p + gamma Y q,  q = -R^-1 S'g,  p = R^-T ((D + gamma Y'Y) R^-1 S'g - gamma Y'g)

    with the pairs oldest first, R the upper triangle of S'Y and D its diagonal: the
    same direction as the two-loop recursion, from two passes over W (W g and W' c)
    instead of 4 * history vector operations. The history x history algebra runs in
    float64. Unwritten slots have zero rows in W; a unit diagonal in R keeps it invertible.
    """
    h = valid.numel()
    slots = torch.arange(h, device=valid.device)
    order = (idx + slots) % h           # slots, oldest first
    from_order = (slots - idx) % h      # inverse permutation
    Wg = (W @ g).double()
    Sg, Yg = Wg[:h][order], Wg[h:][order]
    SY = WW[:h, h:][order][:, order]
    YY = WW[h:, h:][order][:, order]
    valid = valid[order]
    R = SY.triu() + torch.diag((~valid).double())
    gamma = torch.where(valid[-1], SY[-1, -1] / YY[-1, -1], 1.0)
    v = torch.linalg.solve_triangular(R, Sg[:, None], upper=True)
    rhs = SY.diagonal()[:, None] * v + gamma * (YY @ v - Yg[:, None])
    p = torch.linalg.solve_triangular(R.T, rhs, upper=False)
    coef = torch.cat([p[from_order], -gamma * v[from_order]]).reshape(-1).to(g.dtype)
    return -(gamma.to(g.dtype) * g + W.T @ coef)


def loop_record_(total, terms, weights, shown: int, best_loss, bad_streak, row, history, cursor, improved) -> None:
    """nst_fast::loop_record_: one step's bookkeeping of the optimisation loop in place
    (csrc/include/nst_fast/loop_record.h says what it does)."""
    finite = (total - total) == 0
    torch.lt(total, best_loss, out=improved)
    torch.where(improved, total, best_loss, out=best_loss)
    bad_streak.add_(1).masked_fill_(finite, 0)
    sums = (weights.double() * terms.double()).sum(1).float()
    row.copy_(torch.cat([terms[:shown], sums, total.reshape(1)]))
    history.index_copy_(0, cursor.clamp(max=history.size(0) - 1), row.unsqueeze(0))
    cursor.add_(1)


@torch.no_grad()
def adam_step(x, grad, m, v, steps, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """Adam's step in place, as PyTorch's fused kernel takes it (torch._fused_adam_, no
    weight decay): grad was evaluated at x; m and v are the moments, steps the count."""
    g = grad.detach().reshape(x.shape).to(x.dtype)
    steps.add_(1)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    step_size = lr / (1 - beta1 ** steps)
    denom = v.sqrt() / (1 - beta2 ** steps).sqrt() + eps
    x.sub_((step_size * m / denom).to(x.dtype))
