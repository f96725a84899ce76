"""One optimisation run, in one flow: resolve the options, decode the inputs, plan the
sizes, then per scale take the targets and run the loop; every run returns a RunResult.
StyleTransfer keeps the network between runs; stylize() is the one-call API."""
import dataclasses
import functools
from typing import NamedTuple, Optional

import torch

from ..errors import Interrupted, NstError, OutOfMemory, RunStopped
from ..imaging import images
from ..nets import vgg
from ..ops import backend
from ..runtime import heap
from ..runtime.progress import Progress
from . import checkpoint as checkpoint_io, memory, resume as resume_point
from .devices import is_out_of_memory, memory_advice, parse_devices, split_layers
from .loop import Loop, Scale
from .options import Options, default_precision, report_interval
from .plan import plan_sizes
from .result import Hooks, RunResult, check_live
from .targets import initial_image, preserve_colors, scale_loss


class Inputs(NamedTuple):
    """A run's images as tensors at the largest scale's size, and what identifies them."""

    content: torch.Tensor  # (1, 3, H, W) in [0, 1]
    styles: list  # (1, 3, h, w) each, at the style size of the largest scale
    masks: Optional[list]  # one (1, 1, H, W) per style, or None
    alpha: Optional[torch.Tensor]  # the content's transparency, or None
    content_id: object  # images.identity's: the tensor, or a large image's digest
    style_ids: list  # the styles' and then the masks'


class StyleTransfer:
    """Holds the network's weights between runs: build once, call run() (or stylize())
    many times.

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
        self.devices = parse_devices(device)
        backend.tell_unused_kernels(self.devices)
        self.device = self.devices[0]
        self.split_at = split_layers(split_at, self.devices)
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

    def resolve(self, options: Options, n_styles: int) -> Options:
        """`options` resolved for this network, its weights and devices; options resolved
        before the weights loaded (convention None) get the style weight of theirs."""
        return options.resolve(n_styles, self.convention, self.architecture, self.devices) \
            .for_convention(self.convention)

    def stylize(self, content, style, **kwargs):
        """Repaint `content` in the style of `style` (one image or a list); returns a PIL
        image, RGBA with the content's transparency where it has some. Keyword
        arguments: run()'s."""
        return self.run(content, style, **kwargs).to_pil()

    def stylize_tensor(self, content, style, **kwargs) -> torch.Tensor:
        """As stylize(), returning a (1, 3, H, W) tensor in [0, 1] on the CPU."""
        return self.run(content, style, **kwargs).image

    def run(self, content, style, options: Optional[Options] = None, *, hooks: Optional[Hooks] = None,
            resume=None, **fields) -> RunResult:
        """Repaint `content` in the style of `style` (one image or a list) -> RunResult.

        options: an Options (default: Options()); hooks: what the run calls and writes
        as it goes (Hooks); or instead of either, its fields by name:
        run(content, style, size=256, steps=300, callback=print). resume: a checkpoint of
        the same images and options to continue from (same size: exactly where it
        stopped; a larger size: from its image, upscaled). A run that stops early raises
        RunStopped or Interrupted, whose .result is the RunResult as far as it got.
        """
        options, hooks = _from_fields(options, hooks, fields)
        check_live(hooks.live)
        try:
            hooks.check()
            return self._run(content, style, options, hooks, resume)
        finally:
            if hooks.live is not None:
                hooks.live.finish()

    def _run(self, content, style, options, hooks, resume) -> RunResult:
        styles = list(style) if isinstance(style, (list, tuple)) else [style]
        if not styles:
            raise NstError("at least one style image is needed")
        opts = self.resolve(options, len(styles))
        inputs = decode_inputs(content, styles, opts)
        fingerprint, settings = checkpoint_io.identify(inputs.content_id, inputs.style_ids, opts, self)
        saved = checkpoint_io.load(resume, fingerprint, settings) if resume else None
        content_img, style_imgs, finish = preserve_colors(opts.preserve_colors, inputs.content, inputs.styles)
        net = self.network(list(opts.content_layers) + list(opts.style_layers), opts.precision)
        plan = plan_sizes(opts, content_img.shape[-2:], len(style_imgs), self.devices, self.pooling,
                          self.architecture)
        for cached in self._nets.values():  # the transforms of every cached network are freed, or made on use
            cached.use_winograd(plan.winograd_transforms)
        scales = [images.resize_long_side(content_img, size) for size in plan.sizes]
        _check_scale_sizes(scales, plan.sizes, net, self.architecture)
        result = RunResult(None, [], opts, [tuple(s.shape[-2:]) for s in scales], 0,
                           "extension" if backend.uses_extension(self.device) else "reference",
                           alpha=inputs.alpha)
        if opts.precision == "tf32" and default_precision(self.devices) != "tf32":
            result.notes.append("precision tf32 acts on NVIDIA GPUs of the Ampere generation or later only; "
                                "this run was exact fp32")
        if plan.note:
            result.notes.append(plan.note)
        start = resume_point.start(saved, result.sizes, opts.steps_at, resume)
        if saved is not None and start.scale_index == len(scales):
            result.notes.append(f"the checkpoint {resume} is already at step {saved['step']} "
                                f"(>= steps {opts.steps_at(len(scales) - 1)}); its image is the result")
            if hooks.checkpoint:
                checkpoint_io.save(hooks.checkpoint, saved)
        run_scale = functools.partial(self._run_scale, opts, scales, style_imgs, inputs.masks, net, hooks, finish,
                                      (fingerprint, settings), result)
        x, result.history = start.image, start.history
        for index in range(start.scale_index, len(scales)):
            restore = functools.partial(checkpoint_io.restore, resume, saved) if start.restore and \
                index == start.scale_index else None
            x = run_scale(index, x, restore)
        result.image, result.steps = finish(x), sum(opts.steps_at(i) for i in range(len(scales)))
        return result

    def _run_scale(self, opts, scales, style_imgs, masks, net, hooks, finish, identity, result, index, x,
                   restore) -> torch.Tensor:
        """Scale `index` of a run, from x (the last scale's result, or None) -> its result.
        result: the run's RunResult, whose history and CUDA-graph fields it brings up to
        date, and which a stopped run's exception carries."""
        content_t = scales[index]
        hw = tuple(content_t.shape[-2:])
        done = sum(opts.steps_at(i) for i in range(index))
        try:
            loss_fn = scale_loss(net, content_t, style_imgs, opts, hw, vgg.min_side(net.layers, self.architecture),
                                 masks, self.devices)
            x0 = initial_image(opts, content_t, style_imgs, x, self.device)
        except RuntimeError as exc:  # the targets of a larger scale may not fit where its steps would
            if not is_out_of_memory(exc):
                raise
            image = None if x is None else finish(x)
            raise _with_result(OutOfMemory(f"ran out of {self.device.type.upper()} memory preparing size "
                                           f"{max(hw)}; " + memory_advice(self.device), image=image, step=done),
                               result) from None
        rows_before = result.history
        save = functools.partial(_save_checkpoint, identity, hw, index, rows_before, loss_fn)
        loop = Loop(loss_fn, x0, opts, _scale_position(opts, scales, index), self.devices, hooks, save, finish,
                    restore)
        # Large CPU activations reuse the memory of the step before (nst_fast/runtime/heap.py).
        largest = memory.largest_activation_bytes(*hw, opts.precision, self.architecture)
        try:
            with heap.keep_freed_memory(self.device.type == "cpu" and heap.worth_keeping(largest)):
                state = loop.run()
        except (RunStopped, Interrupted) as exc:
            result.history = history_rows(loss_fn, loop.state, rows_before)
            result.cuda_graph, result.why_not = loop.cuda_graph
            raise _with_result(exc, result)
        result.history = history_rows(loss_fn, state, rows_before)
        result.cuda_graph, result.why_not = loop.cuda_graph
        return state.output()


def _from_fields(options, hooks, fields) -> tuple:
    """(options, hooks) of run()'s arguments, where `fields` may stand for either."""
    hook_fields = {name: fields.pop(name) for name in list(fields) if name in Hooks.__dataclass_fields__}
    if hook_fields and hooks is not None:
        raise NstError(f"give hooks or their fields ({', '.join(hook_fields)}), not both")
    if fields and options is not None:
        raise NstError(f"give options or their fields ({', '.join(fields)}), not both")
    return options or Options.from_kwargs(fields), hooks or Hooks(**hook_fields)


def decode_inputs(content, styles, opts) -> Inputs:
    """The run's images, each decoded once; a large image becomes a tensor only reduced
    to the largest scale's needs."""
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
    style_ids = [images.identity(s, t) for s, t in zip(styles + mask_images, style_imgs + (masks or []))]
    return Inputs(content_img, style_imgs, masks, images.alpha(content, long_side),
                  images.identity(content, content_img), style_ids)


def _check_scale_sizes(scales, sizes, net, architecture) -> None:
    min_side = vgg.min_side(net.layers, architecture)
    for content_t, size in zip(scales, sizes):
        h, w = content_t.shape[-2:]
        if min(h, w) < min_side:
            raise NstError(f"the content image is {w}x{h} pixels at size {size}; layers down to "
                           f"{net.layers[-1]} need at least {min_side} pixels per side")


def _scale_position(opts, scales, index) -> Scale:
    work = [opts.steps_at(i) * max(s.shape[-2:]) ** 2 for i, s in enumerate(scales)]  # a step's cost ~ its pixels
    total_work = max(1, sum(work))
    return Scale(opts.steps_at(index), sum(opts.steps_at(i) for i in range(index)),
                 sum(opts.steps_at(i) for i in range(len(scales))), sum(work[:index]) / total_work,
                 max(scales[index].shape[-2:]) ** 2 / total_work)


def history_rows(loss_fn, state, rows_before) -> list:
    """rows_before and then a row per step of `state`: each loss part, and the size."""
    names = loss_fn.part_names()
    values = state.history[: state.step].cpu().tolist()
    return rows_before + [dict(zip(names, v), size=list(state.best.shape[-2:])) for v in values]


def _save_checkpoint(identity, hw, scale_index, rows_before, loss_fn, state, x, optimizer, path) -> None:
    fingerprint, settings = identity
    checkpoint_io.save(path, {
        "fingerprint": fingerprint, "settings": settings, "size": list(hw), "scale_index": scale_index,
        "x": x.detach().cpu(), "optimizer": {k: v.cpu() for k, v in optimizer.state_dict().items()},
        "rows_before": rows_before, "history_rows": history_rows(loss_fn, state, rows_before),
        **{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state.tensors().items()},
    })


def _with_result(exc, result: RunResult):
    """exc with .result: the run's RunResult as far as it got."""
    result.image, result.steps = exc.image, exc.step
    exc.result = result
    return exc


_cached = {}  # what identifies the network -> the StyleTransfer stylize() keeps


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
    given = options.get("options")  # an Options, or its fields among `options`
    seed = given.seed if given is not None else options.get("seed", 0)  # the random weights' too, as on the CLI
    resolved = vgg.resolve_weights(weights)
    key = (resolved, str(parse_devices(device)), pooling, convention, network, str(split_at), padding,
           seed if resolved == "random" else None)
    if key not in _cached:
        _cached.clear()
        _cached[key] = StyleTransfer(weights, device, pooling, convention, seed=seed, network=network,
                                     split_at=split_at, padding=padding)
    transfer = _cached[key]
    if progress:
        report_every = given.report_every if given is not None else options.get("report_every")
        _with_progress(options, Progress(True, report_interval(report_every, transfer.device.type)))
    return transfer.stylize(content, style, **options)


def _with_progress(arguments, bar) -> None:
    """run()'s keyword arguments with bar called after each step, before the callback
    they give (in hooks=, or as callback=)."""
    hooks = arguments.get("hooks")
    user = hooks.callback if hooks is not None else arguments.get("callback")

    def callback(info):
        bar(info)
        if user is not None:
            user(info)

    if hooks is not None:
        arguments["hooks"] = dataclasses.replace(hooks, callback=callback)
    else:
        arguments["callback"] = callback
