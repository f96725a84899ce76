"""One Adam step in place: PyTorch's own fused kernel (torch._fused_adam_, the one behind
torch.optim.Adam(fused=True)), three ops with a copy of the channels-last gradient
where reference.adam_step runs 17, each a kernel launch on a GPU. The state is
nst_fast.optimize.optim.Adam's.
"""
import torch

from . import backend, reference


def adam_step(x, grad, m, v, steps, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """The fused kernel where it runs for the moments (backend.runs_fused_adam: they have
    the dtype and layout x had when they were made) and x and grad still match them;
    reference.adam_step elsewhere."""
    if not (backend.runs_fused_adam(m) and x.is_contiguous() and grad.dtype == x.dtype):
        reference.adam_step(x, grad, m, v, steps, lr, beta1, beta2, eps)
        return
    steps.add_(1)
    # The fused kernel walks the tensors' memory: the gradient in x's layout.
    g = grad.detach().reshape(x.shape).contiguous()
    torch._fused_adam_([x], [g], [m], [v], [], [steps.view(1)], lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0,
                       eps=eps, amsgrad=False, maximize=False)
