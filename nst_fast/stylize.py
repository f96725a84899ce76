"""The optimisation loop: StyleTransfer keeps the network, stylize() runs one job."""
import contextlib
import dataclasses
from typing import Optional

import torch

from . import images, vgg
from .errors import Interrupted, NonFiniteLoss, NstError
from .losses import GatysLoss, gram_target
from .optim import make_optimizer
from .options import Options

LBFGS_HISTORY = 10
LBFGS_MAX_STEP = 0.1  # largest change of any pixel value (in [0, 1]) per L-BFGS step
MAX_NONFINITE = 8  # consecutive NaN/inf evaluations that end a run


@dataclasses.dataclass
class StepInfo:
    """What a callback sees after each step. Losses are 0-dim tensors on the run's
    device; converting them to float waits for the device, so do it sparingly."""

    step: int  # 1-based, counted over all scales
    steps: int  # total steps of the run
    size: tuple  # (H, W) being optimised
    losses: dict
    image: torch.Tensor  # the image just evaluated, (1, 3, H, W) in [0, 1] (not clamped)


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise NstError(f"unknown device {device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NstError("device cuda was asked for but no CUDA GPU is available here; use --device cpu")
    return device


@contextlib.contextmanager
def precision_mode(precision: str, device: torch.device):
    """fp32: exact; tf32: TF32 matmuls and convolutions; bf16: autocast to bfloat16."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class StyleTransfer:
    """Holds VGG-19's weights between runs: build once, call stylize() many times."""

    def __init__(self, weights=None, device=None, pooling="max", convention="auto", seed=0):
        self.device = _device(device)
        self.pooling = pooling
        self.state, self.convention, self.weights = vgg.load_weights(weights, convention, seed)
        self._nets = {}

    def network(self, layers) -> vgg.VGGFeatures:
        key = tuple(sorted(set(layers), key=vgg.LAYER_INDEX.get))
        if key not in self._nets:
            net = vgg.VGGFeatures(key, self.state, self.convention, self.pooling, self.weights)
            self._nets[key] = net.to(self.device)
        return self._nets[key]

    def stylize(self, content, style, **kwargs):
        """Repaint `content` in the style of `style` (one image or a list); returns a PIL image.

        Keyword options are the fields of nst_fast.options.Options.
        """
        return images.to_pil(self.stylize_tensor(content, style, **kwargs))

    def stylize_tensor(self, content, style, **kwargs) -> torch.Tensor:
        styles = list(style) if isinstance(style, (list, tuple)) else [style]
        if not styles:
            raise NstError("at least one style image is needed")
        opts = Options(**kwargs).validate(n_styles=len(styles), convention=self.convention)
        content_img = images.to_tensor(content)
        style_imgs = [images.to_tensor(s) for s in styles]
        net = self.network(list(opts.content_layers) + list(opts.style_layers))
        min_side = max(vgg.layer_downsampling(n) for n in net.layers)

        sizes = opts.sizes()
        total_steps = opts.steps * len(sizes)
        x = None
        for scale_index, size in enumerate(sizes):
            content_t = images.resize_long_side(content_img, size)
            h, w = content_t.shape[-2:]
            if min(h, w) < min_side:
                raise NstError(
                    f"the content image is {w}x{h} pixels at size {size}; layers down to "
                    f"{net.layers[-1]} need at least {min_side} pixels per side"
                )
            loss_fn = self._loss(net, content_t, style_imgs, opts, (h, w), min_side)
            x = self._initial_image(opts, content_t, style_imgs[0], x)
            x = self._optimise(loss_fn, x, opts, scale_index * opts.steps, total_steps)
        return x.detach().clamp(0, 1).cpu()

    def _loss(self, net, content_t, style_imgs, opts, size, min_side) -> GatysLoss:
        dev = self.device
        with torch.no_grad(), precision_mode(opts.precision, dev):
            content_feats = net(content_t.to(dev))
            content_targets = {n: content_feats[n].float().clone() for n in opts.content_layers}
            style_targets = {n: 0 for n in opts.style_layers}
            for img, blend in zip(style_imgs, opts.style_blend):
                long_side = max(1, round(max(size) * opts.style_scale))
                s = images.resize_long_side(img, long_side)
                if min(s.shape[-2:]) < min_side:
                    raise NstError(
                        f"a style image is {s.shape[-1]}x{s.shape[-2]} pixels after scaling; "
                        f"it needs at least {min_side} pixels per side"
                    )
                feats = net(s.to(dev))
                for n in opts.style_layers:
                    out_positions = content_feats[n].shape[-2] * content_feats[n].shape[-1]
                    style_targets[n] = style_targets[n] + blend * gram_target(feats[n], out_positions)
        return GatysLoss(net, content_targets, style_targets, opts.content_layers, opts.style_layers,
                         opts.content_weight, opts.style_weight, opts.tv_weight)

    def _initial_image(self, opts, content_t, style_img, previous) -> torch.Tensor:
        h, w = content_t.shape[-2:]
        if previous is not None:  # coarse-to-fine: continue from the last scale's result
            start = torch.nn.functional.interpolate(previous.cpu(), size=(h, w), mode="bicubic").clamp(0, 1)
        elif isinstance(opts.init, str) and opts.init == "noise":
            gen = torch.Generator().manual_seed(opts.seed)
            start = torch.rand((1, 3, h, w), generator=gen)
        elif isinstance(opts.init, str) and opts.init == "content":
            start = content_t
        elif isinstance(opts.init, str) and opts.init == "style":
            start = torch.nn.functional.interpolate(style_img, size=(h, w), mode="bicubic").clamp(0, 1)
        else:
            start = torch.nn.functional.interpolate(images.to_tensor(opts.init), size=(h, w), mode="bicubic")
        return start.to(self.device, torch.float32).contiguous()

    def _optimise(self, loss_fn, x0, opts, step_offset, total_steps) -> torch.Tensor:
        dev = self.device
        x = x0.clone().requires_grad_(True)
        if opts.optimizer == "lbfgs":
            opt = make_optimizer("lbfgs", x, lr=opts.lr or 1.0, history=LBFGS_HISTORY, max_step=LBFGS_MAX_STEP)
        else:
            opt = make_optimizer("adam", x, lr=opts.lr or 0.02)
        best = x.detach().clone()
        best_loss = torch.full((), float("inf"), device=dev)
        # L-BFGS backtracks from a non-finite trial point; only a run of them is fatal.
        bad_streak = torch.zeros((), dtype=torch.int32, device=dev)
        report_every = opts.report_every or (1 if dev.type == "cpu" else 20)
        step = 0
        try:
            for step in range(1, opts.steps + 1):
                with precision_mode(opts.precision, dev):
                    total, parts = loss_fn(x)
                (grad,) = torch.autograd.grad(total, x)
                with torch.no_grad():
                    improved = total < best_loss  # False for NaN
                    best.copy_(torch.where(improved, x, best))
                    best_loss.copy_(torch.where(improved, total, best_loss))
                    bad_streak.copy_(torch.where(torch.isfinite(total), 0, bad_streak + 1))
                    if opts.callback is not None:
                        opts.callback(StepInfo(step_offset + step, total_steps, tuple(x.shape[-2:]),
                                               {k: v.detach() for k, v in parts.items()}, x.detach()))
                    if step % report_every == 0 or step == opts.steps:
                        if bad_streak >= MAX_NONFINITE or not torch.isfinite(best_loss):
                            raise NonFiniteLoss(
                                f"the loss became {float(total)} at step {step_offset + step} and did not "
                                "recover; lower the loss weights or the learning rate",
                                image=best.clamp(0, 1).cpu(), step=step_offset + step)
                    opt.step(x, total.detach(), grad)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted at step {step_offset + step}", image=best.clamp(0, 1).cpu(),
                              step=step_offset + step) from None
        return best if opts.steps else x.detach()


_default: Optional[StyleTransfer] = None


def stylize(content, style, *, weights=None, device=None, pooling="max", convention="auto", **options):
    """Repaint `content` in the style of `style`; returns a PIL image.

    content/style: paths, PIL images or (3, H, W) tensors in [0, 1] (style may be a list).
    weights: "imagenet" (default, or $NST_FAST_WEIGHTS), "random", or a state-dict path.
    The network is kept between calls with the same weights, device and pooling.
    """
    global _default
    key = (vgg.resolve_weights(weights), str(_device(device)), pooling, convention)
    if _default is None or _default._key != key:
        _default = StyleTransfer(weights, device, pooling, convention)
        _default._key = key
    return _default.stylize(content, style, **options)
