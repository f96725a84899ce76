"""The optimisation loop: StyleTransfer keeps the network, stylize() runs one job."""
import contextlib
import dataclasses
import functools
import os
from typing import Optional

import torch

from ..errors import CheckpointNotWritten, Interrupted, NonFiniteLoss, NstError, OutOfMemory, RunStopped
from ..imaging import color, images
from ..losses import mrf, wasserstein
from ..losses.gatys import GatysLoss, GuidedStyle, WeightedSum, gram_target
from ..losses.mrf import MRFStyle
from ..losses.wasserstein import WassersteinStyle
from ..nets import vgg
from ..ops import backend
from ..runtime import heap, interrupts
from ..runtime.files import not_a_file
from ..runtime.progress import Progress
from . import checkpoint as checkpoint_io, memory
from .optim import make_optimizer
from .options import Options, default_precision, report_interval
from .steps import LoopState, StepRunner

DEFAULT_SPLIT = "pool1"  # two devices: conv1_x's full-size activations on the first, the rest on the second
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
    image: torch.Tensor  # the best image so far, (1, 3, H, W), not yet clamped to [0, 1]; a copy of its own
    done: float = 0.0  # the run's work done so far, steps weighted by their pixels (for time estimates)


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise NstError(f"unknown device {device!r}: {exc}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise NstError(f"device {str(device)!r} is not supported; use cpu, cuda (cuda:N) or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NstError("device cuda was asked for but no CUDA GPU is available here; use device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise NstError("device mps was asked for but this machine has no Apple GPU (MPS); use device cpu")
    return device


def parse_devices(device) -> list:
    """"cuda:0,cuda:1" / a list / one device / None (cuda if there is one, else cpu) ->
    [torch.device, ...]."""
    if isinstance(device, str) and "," in device:
        device = [d.strip() for d in device.split(",")]
    if isinstance(device, (list, tuple)):
        if not device:
            raise NstError("no device given")
        return [_device(d) for d in device]
    return [_device(device)]


def _split_layers(split_at, devices) -> list:
    if isinstance(split_at, str):
        split_at = [n.strip() for n in split_at.split(",") if n.strip()]
    split_at = list(split_at or [])
    if len(devices) > 1 and not split_at:
        if len(devices) > 2:
            raise NstError(f"say where to split the network over {len(devices)} devices (split_at)")
        split_at = [DEFAULT_SPLIT]
    if len(devices) == 1 and split_at:
        raise NstError("split_at needs more than one device")
    return split_at


@contextlib.contextmanager
def tf32_mode(precision: str):
    """TF32 matmuls and convolutions on (tf32) or off (fp32, bf16). A step's backward
    needs it as much as its forward: it picks the backward's convolutions and style
    kernels."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def autocast_mode(precision: str, devices):
    """bf16: autocast to bfloat16 on every type of device among `devices` (one device or a
    list); a forward pass only, the backward follows the forward's dtypes."""
    types = sorted({d.type for d in (devices if isinstance(devices, (list, tuple)) else [devices])})
    with contextlib.ExitStack() as stack:
        if precision == "bf16":
            for device_type in types:
                stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
        yield


@contextlib.contextmanager
def precision_mode(precision: str, devices):
    """fp32: exact; tf32: TF32 matmuls and convolutions; bf16: autocast to bfloat16."""
    with tf32_mode(precision), autocast_mode(precision, devices):
        yield


class StyleTransfer:
    """Holds the network's weights between runs: build once, call stylize() many times.

    network: "vgg19" (the paper's, default), "vgg16", "vgg13", "vgg11", "alexnet" or "nin"
    (Network-in-Network, Caffe's weights converted: neural-style-pt's nin_imagenet.pth).
    padding: how the first convolution pads the image's border: "zeros" (the
    network's own), "replicate" or "reflect" (crowsonkb's, against edge artifacts).
    device: one device, or several ("cuda:0,cuda:1" or a list) to spread the
    network over (model parallelism, for images too large for one device's
    memory): split_at names the layer where each next device starts (default
    for two devices: pool1, which splits the activations' memory roughly in
    half). The image, the optimiser and the losses' sum live on the first."""

    def __init__(self, weights=None, device=None, pooling="max", convention="auto", seed=0, network="vgg19",
                 split_at=None, padding="zeros"):
        self.history, self.last_run, self.last_options = [], {}, None
        self.devices = parse_devices(device)
        backend.tell_unused_kernels(self.devices)
        self.device = self.devices[0]
        self.split_at = _split_layers(split_at, self.devices)
        self.pooling = pooling
        self.architecture = vgg.check_network(network)
        self.padding = vgg.check_padding(padding, network)
        self.state, self.convention, self.weights = vgg.load_weights(weights, convention, seed, network)
        self.weights_seed = seed if self.weights == "random" else None  # random weights: the seed made them
        self._nets = {}

    def network(self, layers, precision="fp32") -> vgg.VGGFeatures:
        """The VGG up to the deepest of `layers`. For bf16 its weights are stored in
        bf16: autocast gives the same arithmetic but re-casts fp32 weights every step."""
        vgg.check_layer_names(layers, network=self.architecture)
        layers = tuple(sorted(set(layers), key=lambda n: vgg.layer_index(n, self.architecture)))
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if (layers, dtype) not in self._nets:
            net = vgg.VGGFeatures(layers, self.state, self.convention, self.pooling, self.weights,
                                  self.architecture, self.padding).to(self.device)
            net.net.to(dtype)  # the convolutions; preprocessing stays in fp32
            if self.split_at:
                net.place(self.devices, self.split_at)
            self._nets[layers, dtype] = net
        return self._nets[layers, dtype]

    def stylize(self, content, style, **kwargs):
        """Repaint `content` in the style of `style` (one image or a list); returns a PIL
        image, RGBA with the content's transparency where it has some.

        Keyword options are the fields of nst_fast.optimize.options.Options.
        """
        if isinstance(content, (str, os.PathLike)):
            content = images.open_image(content)  # decoded once, for the run and its transparency
        result = self.stylize_tensor(content, style, **kwargs)
        transparency = images.alpha(content, self.last_options.sizes()[-1])
        return images.to_pil(images.with_alpha(result, transparency))

    def stylize_tensor(self, content, style, *, checkpoint=None, interrupt_checkpoint=None, resume=None,
                       save_every=0, snapshot=None, live=None, **kwargs) -> torch.Tensor:
        """As stylize(), returning a (1, 3, H, W) tensor in [0, 1] on the CPU.

        checkpoint: a path to save the run's state to (every `checkpoint_every`
        steps, at the end of each scale, and on Ctrl-C); interrupt_checkpoint: where
        Ctrl-C saves one if `checkpoint` is not given; resume: a checkpoint of
        the same images and options to continue from (same size: exactly where it
        stopped; a larger size: from its image, upscaled). save_every/snapshot:
        call snapshot(step, image) with the best image so far every N steps.
        live: a nst_fast.app.web.LivePreview (or anything with its update(info, image)
        and finish()) to show the image so far whenever the losses are read back
        (report_every); finished when the run ends, however it ends.
        """
        _check_live(live)
        try:
            return self._stylize_tensor(content, style, checkpoint, interrupt_checkpoint, resume, save_every,
                                        snapshot, live, kwargs)
        finally:
            if live is not None:
                live.finish()

    def _stylize_tensor(self, content, style, checkpoint, interrupt_checkpoint, resume, save_every, snapshot, live,
                        kwargs) -> torch.Tensor:
        styles = list(style) if isinstance(style, (list, tuple)) else [style]
        if not styles:
            raise NstError("at least one style image is needed")
        _check_snapshots(save_every, snapshot)
        for name, path in (("checkpoint", checkpoint), ("interrupt_checkpoint", interrupt_checkpoint)):
            if path is not None:
                _check_writable(name, path)  # now, not after the steps it would have kept
        opts = Options.from_kwargs(kwargs).validate(n_styles=len(styles), convention=self.convention,
                                                     network=self.architecture, devices=self.devices)
        self.last_options = opts
        # Decoded once; a large image becomes a tensor only reduced to the largest scale's needs.
        long_side = opts.sizes()[-1]
        content, styles = images.decoded(content), [images.decoded(s) for s in styles]
        mask_images = [images.decoded(m) for m in opts.style_masks or []]
        content_img = images.to_tensor(content, long_side)
        style_imgs = [images.to_tensor(s, opts.style_side(long_side)) for s in styles]
        masks = None
        if opts.style_masks is not None:
            masks = [images.to_mask(m, long_side) for m in mask_images]
            for i, mask in enumerate(masks):
                if not mask.any():
                    raise NstError(f"style mask {i + 1} is black everywhere: its style would apply nowhere")
        fp, settings = checkpoint_io.identify(
            images.identity(content, content_img),
            [images.identity(s, t) for s, t in zip(styles + mask_images, style_imgs + (masks or []))], opts, self)
        saved = checkpoint_io.load(resume, fp, settings) if resume else None
        content_img, style_imgs, finish = _preserve_colors(opts.preserve_colors, content_img, style_imgs)
        net = self.network(list(opts.content_layers) + list(opts.style_layers), opts.precision)
        min_side = vgg.min_side(net.layers, self.architecture)
        sizes, transforms, fit_note = self._sizes_that_fit(opts, content_img.shape[-2:], len(style_imgs))
        for cached in self._nets.values():  # the transforms of every cached network are freed, or made on use
            cached.use_winograd(transforms)

        callback = opts.callback
        if (save_every and snapshot is not None) or live is not None:
            live_every = report_interval(opts.report_every, self.device.type)

            def callback(info, user=opts.callback):
                if user is not None:
                    user(info)
                if save_every and snapshot is not None and info.step % save_every == 0:
                    snapshot(info.step, finish(info.image))
                if live is not None and (info.step % live_every == 0 or info.step == info.steps):
                    live.update(info, finish(info.image))
        opts.callback = callback

        total_steps = sum(opts.steps_at(i) for i in range(len(sizes)))
        work = [opts.steps_at(i) * size**2 for i, size in enumerate(sizes)]  # a step's cost ~ its pixels
        self.history, x = [], None
        self.last_run = {"cuda_graph": False, "why_not": "no steps were run"}  # until a scale runs some
        if opts.precision == "tf32" and default_precision(self.devices) != "tf32":
            self._note("precision tf32 acts on NVIDIA GPUs of the Ampere generation or later only; "
                       "this run was exact fp32")
        if fit_note:
            self._note(fit_note)
        for scale_index, size in enumerate(sizes):
            content_t = images.resize_long_side(content_img, size)
            h, w = content_t.shape[-2:]
            if min(h, w) < min_side:
                raise NstError(
                    f"the content image is {w}x{h} pixels at size {size}; layers down to "
                    f"{net.layers[-1]} need at least {min_side} pixels per side"
                )
            restore = None
            if saved is not None:
                if tuple(saved["size"]) == (h, w) and saved["step"] >= opts.steps_at(scale_index):
                    # This scale holds the steps asked for, or more: go on from its image as from a finished scale.
                    x, self.history = saved.get("result", saved["best"]), saved["history_rows"]
                    if scale_index == len(sizes) - 1:
                        self._note(f"the checkpoint {resume} is already at step {saved['step']} "
                                   f"(>= steps {opts.steps_at(scale_index)}); its image is the result")
                        if checkpoint:
                            checkpoint_io.save(checkpoint, saved)
                    saved = None
                    continue
                if tuple(saved["size"]) == (h, w):
                    restore = functools.partial(checkpoint_io.restore, resume, saved)
                    self.history, saved = saved["rows_before"], None
                elif max(h, w) <= max(saved["size"]):
                    continue  # this scale was done before the checkpoint
                else:  # continue upscaled from the checkpoint's image
                    x, self.history, saved = saved.get("result", saved["best"]), saved["history_rows"], None
            try:
                loss_fn = self._loss(net, content_t, style_imgs, opts, (h, w), min_side, masks)
                x = self._initial_image(opts, content_t, style_imgs, x)
            except RuntimeError as exc:  # the targets of a larger scale may not fit where its steps would
                if not is_out_of_memory(exc):
                    raise
                done = sum(opts.steps_at(i) for i in range(scale_index))
                raise OutOfMemory(f"ran out of {self.device.type.upper()} memory preparing size {size}; "
                                  + _memory_advice(self.device), image=None if x is None else finish(x),
                                  step=done) from None
            rows_before = self.history

            def save_checkpoint(state, x_now, opt, path, scale_index=scale_index, rows_before=rows_before,
                                loss_fn=loss_fn):
                checkpoint_io.save(path, {
                    "fingerprint": fp, "settings": settings, "size": [h, w], "scale_index": scale_index,
                    "x": x_now.detach().cpu(), "optimizer": {k: v.cpu() for k, v in opt.state_dict().items()},
                    "rows_before": rows_before, "history_rows": self._history_rows(loss_fn, state, rows_before),
                    **{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state.tensors().items()},
                })

            # Large CPU activations reuse the memory of the step before (nst_fast/runtime/heap.py).
            largest = memory.largest_activation_bytes(h, w, opts.precision, self.architecture)
            try:
                with heap.keep_freed_memory(self.device.type == "cpu" and heap.worth_keeping(largest)):
                    state = self._optimise(loss_fn, x, opts, opts.steps_at(scale_index),
                                           sum(opts.steps_at(i) for i in range(scale_index)), total_steps,
                                           restore=restore, checkpoint=checkpoint,
                                           interrupt_checkpoint=interrupt_checkpoint, save_checkpoint=save_checkpoint,
                                           work=(sum(work[:scale_index]) / max(1, sum(work)),
                                                 size**2 / max(1, sum(work))))
            except (RunStopped, Interrupted) as exc:
                exc.image = finish(exc.image)
                raise
            self.history = self._history_rows(loss_fn, state, rows_before)
            x = state.output()
        if x is None:
            raise NstError(f"checkpoint {resume} is larger than the requested size; ask for its size or more")
        return finish(x)

    @staticmethod
    def _history_rows(loss_fn, state, rows):
        names = loss_fn.part_names()
        values = state.history[: state.step].cpu().tolist()
        return rows + [dict(zip(names, v), size=list(state.best.shape[-2:])) for v in values]

    def _sizes_that_fit(self, opts, content_hw, n_styles):
        """-> (opts.sizes(), whether the CPU convolutions keep Winograd weight transforms,
        a note telling what was changed to fit, or None): refused (or, with fit_memory,
        shrunk) when the largest cannot fit in memory. A run that fits only without the
        transforms, or fits larger, runs without them."""
        sizes = opts.sizes()
        h, w = content_hw
        long_side = sizes[-1]
        # Rounded as the resize rounds, so a sliver of an image reaches the too-small check.
        height, width = ((long_side, max(1, round(long_side * w / h))) if h >= w
                         else (max(1, round(long_side * h / w)), long_side))
        args = dict(content_layers=list(opts.content_layers), style_layers=list(opts.style_layers),
                    optimizer=opts.optimizer, precision=opts.precision, history=opts.lbfgs_history,
                    device=self.device.type, pooling=self.pooling, network=self.architecture,
                    style_regions=len(opts.style_masks or []), style_loss=opts.style_loss, styles=n_styles,
                    mrf_variants=len(mrf.VARIANT_ANGLES) * len(mrf.VARIANT_SCALES) if opts.mrf_variants else 1,
                    style_scale=opts.style_size / long_side if opts.style_size else opts.style_scale,
                    winograd_transforms=not opts.low_memory)
        need = memory.estimate_bytes(height, width, **args)
        # Split over several devices, the check is against their free memory together.
        budget = opts.memory_limit if opts.memory_limit is not None else \
            sum(memory.available_bytes(d) for d in dict.fromkeys(self.devices))
        note = None
        if need > budget and args["winograd_transforms"]:
            # Without the transforms the weights take less and the activations more (a
            # PyTorch convolution keeps its input): which reaches the larger size is a
            # matter of the size each reaches, not of the two estimates at this one.
            lean = dict(args, winograd_transforms=False)
            if memory.largest_size(budget, w / h, **lean) > memory.largest_size(budget, w / h, **args):
                args, need = lean, memory.estimate_bytes(height, width, **lean)
                note = ("the run fits in memory only without the Winograd weight transforms: it ran as "
                        "low_memory (--low-memory), with slower steps")
        if need > budget:
            fits = memory.largest_size(budget, w / h, **args)
            shorter_history = memory.largest_history(budget, height, width, **args)
            shortfall = (f"a {width}x{height} run needs about {need / 2**30:.1f} GiB but {budget / 2**30:.1f} GiB "
                         f"is available on {self._where()}")
            fewer_pairs = (f"keep fewer L-BFGS curvature pairs: lbfgs_history {shorter_history} fits at size "
                           f"{long_side} (--lbfgs-history {shorter_history})" if shorter_history else None)
            if fits < 16:
                if fewer_pairs:
                    pairs = memory.estimate_parts(height, width, **args)["optimizer"]
                    raise NstError(f"{shortfall}, {pairs / 2**30:.1f} GiB of it for the L-BFGS history "
                                   f"(lbfgs_history {opts.lbfgs_history}), and no smaller size fits; {fewer_pairs}")
                raise NstError(f"not enough memory on {self._where()} for even a 16-pixel run")
            if not opts.fit_memory:
                raise NstError(
                    f"{shortfall}; the largest size that fits is {fits}: ask for size {fits}, "
                    "or let fit_memory (--fit-memory) pick it" + (f", or {fewer_pairs}" if fewer_pairs else ""))
            sizes = [s for s in sizes if s < fits] + [fits]
            switched = not args["winograd_transforms"] and not opts.low_memory
            note = (f"{shortfall}: fit_memory ran it at size {fits}, the largest that fits"
                    + (" without the Winograd weight transforms, as low_memory (--low-memory), with slower steps"
                       if switched else "")
                    + (f"; {fewer_pairs}" if fewer_pairs else ""))
        # The style targets are taken before the steps run, at the style images' own size.
        style_side = opts.style_side(sizes[-1])
        style_need = memory.style_pass_bytes(style_side, w / h, list(opts.style_layers), opts.precision,
                                             self.device.type, self.architecture, args["winograd_transforms"])
        if style_need > budget:
            raise NstError(f"the style images at {style_side} px (style_size / style_scale) need about "
                           f"{style_need / 2**30:.1f} GiB but {budget / 2**30:.1f} GiB is available on "
                           f"{self._where()}; give a smaller style size")
        return sizes, args["winograd_transforms"], note

    def _note(self, text: str) -> None:
        """Tell the user `text` (last_run["note"], which the command line prints), on one
        line with the run's other notes."""
        earlier = self.last_run.get("note")
        self.last_run["note"] = f"{earlier}; {text}" if earlier else text

    def _where(self) -> str:
        return ", ".join(str(d) for d in dict.fromkeys(self.devices))

    def _loss(self, net, content_t, style_imgs, opts, size, min_side, masks=None) -> GatysLoss:
        """The loss at this scale; with masks, each style's loss covers its mask's region."""
        dev = self.device
        with torch.no_grad(), precision_mode(opts.precision, self.devices):
            content_feats = net(content_t.to(dev))
            content_targets = {n: content_feats[n].float().clone() for n in opts.content_layers}
            style_feats = []
            for img in style_imgs:
                s = images.resize_long_side(img, opts.style_side(max(size)))
                if min(s.shape[-2:]) < min_side:
                    raise NstError(
                        f"a style image is {s.shape[-1]}x{s.shape[-2]} pixels after scaling; "
                        f"it needs at least {min_side} pixels per side"
                    )
                if opts.mrf_variants:  # each layer: a list of the variants' features
                    variants = [net(v.to(dev)) for v in mrf.style_variants(s)]
                    style_feats.append({n: [f[n] for f in variants] for n in opts.style_layers})
                else:
                    feats = net(s.to(dev))
                    style_feats.append({n: feats[n] for n in opts.style_layers})
            layer_hw = {n: content_feats[n].shape[-2:] for n in opts.style_layers}
            # Each style's mask at each style layer's resolution (spatial control).
            layer_masks = None
            if masks:
                layer_masks = {n: [images.resize_mask(images.resize_mask(m, size), layer_hw[n])
                                   .to(content_feats[n].device) for m in masks] for n in opts.style_layers}
            if opts.style_loss == "w2":
                style_targets = {n: _w2_targets(style_feats, n, opts.style_blend, layer_masks[n] if masks else None)
                                 for n in opts.style_layers}
            elif opts.style_loss == "mrf":
                _check_patches(list(layer_hw.values()) + [_first(f[n]).shape[-2:] for f in style_feats for n in f])
                style_targets = {n: MRFStyle([f[n] for f in style_feats], opts.style_blend,
                                             layer_masks[n] if masks else None) for n in opts.style_layers}
            elif masks:
                style_targets = {n: _guided_targets(style_feats, n, layer_masks[n], opts.style_blend,
                                                    content_feats[n].dtype) for n in opts.style_layers}
            else:
                style_targets = {n: sum(blend * gram_target(f[n], layer_hw[n].numel())
                                        for f, blend in zip(style_feats, opts.style_blend))
                                 for n in opts.style_layers}
        return GatysLoss(net, content_targets, style_targets, opts.content_layers, opts.style_layers,
                         opts.content_weight, opts.style_weight, opts.tv_weight, opts.normalize_gradients)

    def _initial_image(self, opts, content_t, style_imgs, previous) -> torch.Tensor:
        h, w = content_t.shape[-2:]
        if previous is not None:  # coarse-to-fine: continue from the last scale's result
            start = torch.nn.functional.interpolate(previous.cpu(), size=(h, w), mode="bicubic").clamp(0, 1)
        elif isinstance(opts.init, str) and opts.init == "noise":
            gen = torch.Generator().manual_seed(opts.seed)
            start = torch.rand((1, 3, h, w), generator=gen)
        elif isinstance(opts.init, str) and opts.init == "gray":
            gen = torch.Generator().manual_seed(opts.seed)
            start = 0.5 + (torch.rand((1, 3, h, w), generator=gen) - 0.5) / 255  # 1/255 noise breaks symmetry
        elif isinstance(opts.init, str) and opts.init == "content":
            start = content_t
        elif isinstance(opts.init, str) and opts.init == "style":
            start = torch.nn.functional.interpolate(style_imgs[0], size=(h, w), mode="bicubic").clamp(0, 1)
        elif isinstance(opts.init, str) and opts.init == "style_stats":
            # Noise with the styles' colour statistics (per channel; crowsonkb's init).
            blends = torch.tensor(opts.style_blend).view(-1, 1)
            means = torch.stack([img.mean(dim=(0, 2, 3)) for img in style_imgs])
            squares = torch.stack([img.square().mean(dim=(0, 2, 3)) for img in style_imgs])
            mean = (blends * means).sum(0)
            std = ((blends * squares).sum(0) - mean.square()).clamp_min(0).sqrt()
            gen = torch.Generator().manual_seed(opts.seed)
            noise = torch.randn((1, 3, h, w), generator=gen)
            start = (mean.view(1, 3, 1, 1) + std.view(1, 3, 1, 1) * noise).clamp(0, 1)
        else:
            start = torch.nn.functional.interpolate(images.to_tensor(opts.init, max(h, w)), size=(h, w), mode="bicubic")
        return start.to(self.device, torch.float32).contiguous()

    def _optimise(self, loss_fn, x0, opts, steps, step_offset, total_steps, restore=None, checkpoint=None,
                  interrupt_checkpoint=None, save_checkpoint=None, work=(0.0, 0.0)):
        """Run `steps` steps from x0 (or from where restore(state, x, optimiser) puts
        them, a checkpoint) -> the LoopState at the end.

        save_checkpoint(state, x, optimiser, path) writes `checkpoint` every
        opts.checkpoint_every steps and at the end, and on Ctrl-C (or to
        `interrupt_checkpoint` when there is no `checkpoint`). work: the run's work
        done before this scale and per step of it, as fractions (StepInfo.done).
        """
        dev = self.device
        x = x0.clone().requires_grad_(True)
        if opts.optimizer == "lbfgs":
            opt = make_optimizer("lbfgs", x, lr=opts.lr or 1.0, history=opts.lbfgs_history, max_step=LBFGS_MAX_STEP)
        else:
            opt = make_optimizer("adam", x, lr=opts.lr or 0.02)
        names = loss_fn.part_names()
        state = LoopState.start(x, steps, len(names), opts.avg_decay)
        if restore is not None:
            restore(state, x, opt)
        report_every = report_interval(opts.report_every, dev.type)
        weights, shown = loss_fn.history_weights(dev), loss_fn.shown_terms()

        # From a step's first change of the run's state to its count: Ctrl-C waits for the
        # step's end, so that a checkpoint never holds an update without its step.
        update = interrupts.Deferral()

        def one_step():
            with tf32_mode(opts.precision):
                with autocast_mode(opts.precision, self.devices):
                    total, terms = loss_fn.terms(x)
                (grad,) = torch.autograd.grad(total, x)
            update.hold()
            with torch.no_grad():
                state.record(x, total.detach(), terms.detach(), weights, shown)
                opt.step(x, total.detach(), grad)
            return state.row  # the step's parts, in names' order

        eager_because = None
        if len(self.devices) > 1:
            eager_because = "the network is split over several devices"
        elif opts.style_loss == "w2":  # eigh checks its result on the host, which capture forbids
            eager_because = "the W2 style loss's eigendecomposition synchronises with the host"
        runner = StepRunner(one_step, dev, False if eager_because else opts.cuda_graph)
        if eager_because and dev.type == "cuda":
            runner.why_not = eager_because

        def so_far():
            return state.output().clamp(0, 1).cpu()

        def write_checkpoint(path):
            try:
                save_checkpoint(state, x, opt, path)
            except OSError as exc:  # the image so far goes with the error: a full disk loses no work
                raise CheckpointNotWritten(f"could not write the checkpoint {path}: {exc.strerror or exc}",
                                           image=so_far(), step=step_offset + state.step) from exc

        def checkpoint_on_stop(message):
            """`message` of a run that stops early, once its checkpoint is written (or why not)."""
            if checkpoint or interrupt_checkpoint:
                try:
                    write_checkpoint(checkpoint or interrupt_checkpoint)
                except CheckpointNotWritten as exc:
                    message += f"; {exc}"
            return message

        out_of_memory = None
        try:
            for step in range(state.step + 1, steps + 1):
                with update:
                    if runner.graphed:  # a replay is the whole step at once: nothing in it to interrupt
                        update.hold()
                    row = runner()
                    state.step = step
                if opts.callback is not None:
                    parts = dict(zip(names, row.clone().unbind()))  # the callback's to keep
                    opts.callback(StepInfo(step_offset + step, total_steps, tuple(x.shape[-2:]), parts,
                                           state.output_copy(), done=min(1.0, work[0] + step * work[1])))
                if step % report_every == 0 or step == steps:
                    if state.bad_streak >= MAX_NONFINITE or not torch.isfinite(state.best_loss):
                        raise NonFiniteLoss(
                            f"the loss became {float(row[-1])} at step {step_offset + step} and did "
                            "not recover; lower the loss weights or the learning rate",
                            image=so_far(), step=step_offset + step)
                if checkpoint and opts.checkpoint_every and step % opts.checkpoint_every == 0:
                    write_checkpoint(checkpoint)
        except KeyboardInterrupt:
            # state.step: the steps finished, as the checkpoint holds (Ctrl-C mostly comes in mid-step).
            with interrupts.ignored():
                message = checkpoint_on_stop(f"interrupted at step {step_offset + state.step}")
                image = so_far()
            raise Interrupted(message, image=image, step=step_offset + state.step) from None
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = f"ran out of {dev.type.upper()} memory at step {step_offset + state.step + 1}"
        if out_of_memory:
            # Out here, not in the except clause, whose traceback keeps the failed step's tensors.
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            message = checkpoint_on_stop(f"{out_of_memory}; {_memory_advice(dev)}")
            raise OutOfMemory(message, image=so_far(), step=step_offset + state.step)
        why_not = runner.why_not or (None if runner.graphed else "fewer steps than the warm-up before capture")
        self.last_run.update(cuda_graph=runner.graphed, why_not=why_not)
        if checkpoint:
            write_checkpoint(checkpoint)
        return state


def _memory_advice(device: torch.device) -> str:
    lighter = "precision bf16 (--precision bf16)" if device.type == "cuda" else "low_memory (--low-memory)"
    return f"ask for a smaller size, let fit_memory (--fit-memory) pick one, or use {lighter}"


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory errors: its own class on a GPU, a RuntimeError on the CPU."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _check_snapshots(save_every, snapshot) -> None:
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
        raise NstError(f"save_every must be 0 (off) or a number of steps, got {save_every!r}")
    if snapshot is not None and not callable(snapshot):
        raise NstError(f"snapshot must be a function of (step, image), got {snapshot!r}")
    if (snapshot is None) != (save_every == 0):
        raise NstError("save_every and snapshot go together: snapshot(step, image) is called every save_every steps")


def _check_live(live) -> None:
    if live is not None and not all(callable(getattr(live, name, None)) for name in ("update", "finish")):
        raise NstError(f"live must be a nst_fast.app.web.LivePreview, or have its update(info, image) and finish(), "
                       f"got {live!r}")


def _check_writable(name, path) -> None:
    """A file the run will write: a path in a folder that exists, and a regular file or
    none (no folder, device or FIFO)."""
    if not isinstance(path, (str, os.PathLike)):
        raise NstError(f"{name} must be a file path, got {path!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NstError(f"the folder of {name} {path} does not exist")
    problem = not_a_file(name, path)
    if problem:
        raise NstError(problem)


def _guided_targets(style_feats, layer, masks, blends, dtype) -> list:
    """One GuidedStyle per style whose mask still covers positions at this layer."""
    guides = []
    for feats, mask, blend in zip(style_feats, masks, blends):
        mask = mask.to(dtype)  # the features' dtype: no cast per step
        positions = float(mask.float().square().sum())
        if positions > 1e-6:  # else the region vanished at this depth
            guides.append(GuidedStyle(mask, gram_target(feats[layer], positions), blend, positions))
    return guides


def _w2_targets(style_feats, layer, blends, masks=None):
    """The W2 loss of one layer: against the blended styles' moments, or under spatial
    control, a blend of each style's loss over its own region."""
    if masks is None:
        return WassersteinStyle(wasserstein.blend([wasserstein.moments(f[layer]) for f in style_feats], blends))
    return WeightedSum([(blend, WassersteinStyle(wasserstein.moments(f[layer]), mask))
                        for f, mask, blend in zip(style_feats, masks, blends)
                        if float(mask.square().sum()) > 1e-6])


def _first(features):
    """A style's features at a layer, or the first of its MRF variants'."""
    return features[0] if isinstance(features, list) else features


def _check_patches(layer_sizes):
    smallest = min(min(hw) for hw in layer_sizes)
    if smallest < mrf.PATCH:
        raise NstError(f"the MRF style loss needs {mrf.PATCH}x{mrf.PATCH} patches of features, but a style "
                       f"layer is only {smallest} positions across here; use a larger size or shallower layers")


def _preserve_colors(mode, content, styles):
    """-> (content, styles) to optimise with, and finish(image) giving what the user sees.

    luminance: optimise grey images (the style's luminance matched to the content's)
    and put the content's chroma back at the end; match/histogram: recolour the
    styles to the content's colour statistics first.
    """
    if mode in ("match", "histogram"):
        method = "covariance" if mode == "match" else "histogram"
        styles = [color.match_color(s, content, method) for s in styles]
    original = content
    if mode == "luminance":
        content = color.luminance_image(content)
        styles = [color.luminance_image(color.match_luminance(color.luminance_image(s), content)) for s in styles]

    def finish(image):
        image = image.detach().float().clamp(0, 1).cpu()
        if mode == "luminance":
            image = color.combine_luminance(image, images.resize_long_side(original, max(image.shape[-2:])))
        return image

    return content, styles, finish


_default: Optional[StyleTransfer] = None


def stylize(content, style, *, weights=None, device=None, pooling="max", convention="auto", network="vgg19",
            split_at=None, padding="zeros", progress=True, **options):
    """Repaint `content` in the style of `style`; returns a PIL image (RGBA with the
    content's transparency where it has some).

    content/style: paths, PIL images, NumPy arrays ((H, W, 3) RGB, uint8 or float in
    [0, 1]) or (3, H, W) tensors in [0, 1] (style may be a list).
    weights: "imagenet" (default, or $NST_FAST_WEIGHTS), "random", or a state-dict path.
    network: "vgg19" (default), "vgg16", "vgg13", "vgg11", "alexnet" or "nin".
    device, split_at, padding: see StyleTransfer.
    progress: a progress line with the losses and the time left on stderr, as the
    command line shows it (False: silent).
    The network is kept between calls with the same weights, devices, pooling, padding and network.
    """
    global _default
    seed = options.get("seed", 0)  # the random weights' too, as on the command line
    resolved = vgg.resolve_weights(weights)
    key = (resolved, str(parse_devices(device)), pooling, convention, network, str(split_at), padding,
           seed if resolved == "random" else None)
    if _default is None or _default._key != key:
        _default = StyleTransfer(weights, device, pooling, convention, seed=seed, network=network,
                                 split_at=split_at, padding=padding)
        _default._key = key
    if progress:
        bar = Progress(True, report_interval(options.get("report_every"), _default.device.type))
        user = options.get("callback")

        def callback(info):
            bar(info)
            if user is not None:
                user(info)

        options["callback"] = callback
    return _default.stylize(content, style, **options)
