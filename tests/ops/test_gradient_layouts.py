"""Gradients in the activations' layout (channels-last): a step's backward never hands an
elementwise op a contiguous gradient beside a channels-last activation, which sends it
down strided loops (~15x slower on a CPU). The content loss is mse_loss's value with
such a gradient."""
import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nst_fast import StyleTransfer
from nst_fast.losses import gatys as losses
from nst_fast.nets import vgg


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_equals_half_mse_loss_bit_for_bit(dtype, channels_last):
    gen = torch.Generator().manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    features = torch.randn(2, 65, 7, 9, generator=gen).to(dtype).contiguous(memory_format=layout)
    target = torch.randn(2, 65, 7, 9, generator=gen).contiguous(memory_format=layout)
    mine, theirs = features.clone().requires_grad_(), features.clone().requires_grad_()
    loss = losses.content_loss(mine, target)
    expected = 0.5 * F.mse_loss(theirs.float(), target, reduction="sum")
    (grad,) = torch.autograd.grad(loss * 3.7, mine)
    (expected_grad,) = torch.autograd.grad(expected * 3.7, theirs)
    assert loss.dtype == torch.float32 and torch.equal(loss, expected)
    assert grad.dtype == dtype and torch.equal(grad, expected_grad)
    assert grad.stride() == features.stride()


def _layout(t):
    """The strides that matter: those of dimensions longer than 1."""
    return [stride for stride, size in zip(t.stride(), t.shape) if size > 1]


class _MixedLayouts(TorchDispatchMode):
    """Records elementwise ops of the backward given same-shaped 4-D tensors in different layouts."""

    WATCHED = ("threshold_backward", "add", "relu_max_pool2_backward", "style_loss_relu_backward")

    def __init__(self):
        super().__init__()
        self.seen, self.mixed = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name.rstrip("_") in self.WATCHED:
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 3 and a.numel() > 1]
            if len(tensors) >= 2 and tensors[0].shape == tensors[1].shape:
                self.seen.append(name)
                if _layout(tensors[0]) != _layout(tensors[1]):
                    self.mixed.append((name, tuple(tensors[0].shape), tensors[0].stride(), tensors[1].stride()))
        return func(*args, **(kwargs or {}))


def test_a_step_never_mixes_layouts_in_its_backward():
    """Content at relu3_2, a plain ReLU below conv3_3 (as relu4_2 in the default layers):
    its gradient meets the one from above and the ReLU's mask, all channels-last."""
    net = vgg.VGGFeatures(["relu1_1", "relu2_1", "relu3_2", "relu3_3"], vgg.random_state(0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 32, 40, generator=gen))
    targets = {name: losses.gram_target(feats[name], 1.0) for name in ("relu1_1", "relu2_1", "relu3_3")}
    loss = losses.GatysLoss(net, {"relu3_2": feats["relu3_2"].float().clone()}, targets, {"relu3_2": 1.0},
                            {name: 1 / 3 for name in targets}, alpha=1.0, beta=1e3, tv_weight=0.0)
    image = torch.rand(1, 3, 32, 40, generator=gen).requires_grad_()
    total, _ = loss.terms(image)
    spy = _MixedLayouts()
    with spy:
        torch.autograd.grad(total, image)
    assert "threshold_backward" in spy.seen
    assert not spy.mixed


@pytest.mark.slow
@pytest.mark.parametrize("style_loss", ["gram", "w2", "mrf"])
def test_no_style_loss_mixes_layouts(small_images, style_loss):
    """W2's moments and MRF's patches are PyTorch ops whose own backwards write
    contiguous gradients (select, mm, fold)."""
    transfer = StyleTransfer(weights="random", device="cpu")
    run = dict(size=64, steps=2, style_loss=style_loss)
    transfer.stylize_tensor(*small_images, **run)  # the set-up: targets, transforms
    spy = _MixedLayouts()
    with spy:
        transfer.stylize_tensor(*small_images, **run)
    assert "threshold_backward" in spy.seen
    assert not spy.mixed
