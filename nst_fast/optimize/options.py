"""Options of a stylize run: defaults, parsing of layer specs, validation."""
import dataclasses
import difflib
import math
import os
from typing import Optional, Sequence

from ..errors import NstError
from .flag_types import csv_floats, csv_ints, csv_paths, memory_amount

# torch and .vgg (which imports it) are imported where used: the command line builds
# its parser from Options' fields and must start without waiting for torch.

DEFAULT_CONTENT_LAYERS = {"relu4_2": 1.0}
DEFAULT_STYLE_LAYERS = {name: 0.2 for name in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")}
MRF_STYLE_LAYERS = {"relu3_1": 0.5, "relu4_1": 0.5}  # Li and Wand's
# NIN: jcjohnson's layers for content and style alike; for MRF, the two middle ones.
NIN_LAYERS = {name: 0.25 for name in ("relu0", "relu3", "relu7", "relu12")}
NIN_MRF_STYLE_LAYERS = {"relu3": 0.5, "relu7": 0.5}
# AlexNet: every ReLU for style, the second-deepest for content (as relu4_2 in VGG-19);
# for MRF, the two finest beyond relu1 (relu3 is already at 1/16 of the image).
ALEXNET_CONTENT_LAYERS = {"relu4": 1.0}
ALEXNET_STYLE_LAYERS = {f"relu{i}": 0.2 for i in range(1, 6)}
ALEXNET_MRF_STYLE_LAYERS = {"relu2": 0.5, "relu3": 0.5}
STYLE_LOSSES = ("gram", "w2", "mrf")
# beta per weights convention: Caffe-convention activations are ~60x larger (0..255
# input), and the Gram style term grows with their 4th power, the content term with
# the 2nd. The W2 and MRF terms grow with the 2nd power too, so one beta serves both
# conventions.
DEFAULT_STYLE_WEIGHT = {"caffe": 1e4, "torchvision": 5e7}
# Calibrated on the Caffe VGG-19 at 256 px (docs/decisions.md): 20 steps from the
# content image reduce the W2 loss about as much as the Gram loss at its default.
DEFAULT_STYLE_WEIGHT_SQUARED = {"w2": 1e6, "mrf": 1e6}
INITS = ("noise", "gray", "content", "style", "style_stats")
OPTIMIZERS = ("lbfgs", "adam")
PRECISIONS = ("fp32", "tf32", "bf16")
PRESERVE_COLORS = (None, "luminance", "match", "histogram")
# Arguments of nst_fast.stylize and StyleTransfer() that are not run options: named
# in the suggestion for a misspelt option.
SETUP_ARGUMENTS = ("weights", "device", "pooling", "convention", "network", "split_at", "padding", "progress")


def default_precision(devices) -> str:
    """tf32 where a device is a GPU with TF32 (NVIDIA Ampere or later), else fp32.
    PyTorch's own default runs cuDNN convolutions in TF32 there, so every tutorial-style
    loop does; nst_fast's tf32 reached the fp32 final loss within 0.1% in less than half
    the time per step on an H100 (benchmarks/RESULTS.md). fp32 stays exact where asked for."""
    import torch

    for device in devices:
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
            return "tf32"
    return "fp32"


def default_layers(network: str, style_loss: str = "gram") -> tuple:
    """(content layers, style layers) with their weights, by default, for this network and style loss."""
    from ..nets.vgg import check_network

    if check_network(network) == "nin":
        return dict(NIN_LAYERS), dict(NIN_MRF_STYLE_LAYERS if style_loss == "mrf" else NIN_LAYERS)
    if network == "alexnet":
        return dict(ALEXNET_CONTENT_LAYERS), dict(ALEXNET_MRF_STYLE_LAYERS if style_loss == "mrf"
                                                  else ALEXNET_STYLE_LAYERS)
    return dict(DEFAULT_CONTENT_LAYERS), dict(MRF_STYLE_LAYERS if style_loss == "mrf" else DEFAULT_STYLE_LAYERS)


def parse_layers(spec, what: str, network: str = "vgg19") -> dict:
    """"relu1_1:0.2,relu2_1" / a list of names / a {name: weight} dict -> {name: weight}.

    Names without a weight share the weight equally with each other.
    """
    from ..nets.vgg import check_layer_names

    if isinstance(spec, dict):
        items = [(str(k), v) for k, v in spec.items()]
    elif not isinstance(spec, (str, list, tuple)):
        raise NstError(f"{what} layers must be a string like 'relu1_1:0.5,relu2_1', a list or a dict, got {spec!r}")
    else:
        if isinstance(spec, str):
            spec = [s for s in spec.split(",") if s.strip()]
        items = [_layer_and_weight(str(entry), what) for entry in spec]
    if not items:
        raise NstError(f"no {what} layers given")
    names = [n for n, _ in items]
    check_layer_names(names, f"{what} layer", network)
    repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if repeated is not None:
        raise NstError(f"{what} layer {repeated} is given more than once; name each layer once, with its weight")
    out = {}
    for name, weight in items:
        if weight is None:
            weight = 1.0 / len(items)
        try:
            weight = float(weight)
        except ValueError:
            raise NstError(f"{what} layer weight for {name} is not a number: {weight!r}") from None
        _check_weight(f"{what} layer weight for {name}", weight)
        out[name] = weight
    if sum(out.values()) <= 0:
        raise NstError(f"{what} layer weights must not all be zero")
    return out


def _layer_and_weight(entry: str, what: str) -> tuple:
    """"relu1_1:0.2" -> ("relu1_1", "0.2"); "relu1_1" -> ("relu1_1", None)."""
    name, colon, weight = entry.strip().partition(":")
    name, weight = name.strip(), weight.strip()
    if colon and not weight:
        raise NstError(f"{what} layer {name} has no weight after its ':'; give one (relu1_1:0.5) or drop the ':'")
    return name, weight if colon else None


def _device_type(device) -> str:
    import torch

    return torch.device(device).type


def report_interval(report_every: Optional[int], device_type: str) -> int:
    """Steps between reading the losses back: as asked, else every step on the CPU
    (reading costs nothing there) and every 20 on a GPU (it waits for the device)."""
    return report_every or (1 if device_type == "cpu" else 20)


def _per_channel(weights: dict, network: str) -> dict:
    """Each layer's weight divided by its channel count, rescaled to the same sum: the
    balance moves toward layers with fewer channels, the losses' overall weight stays."""
    from ..nets.vgg import layer_channels

    divided = {name: w / layer_channels(name, network) for name, w in weights.items()}
    scale = sum(weights.values()) / sum(divided.values())
    return {name: w * scale for name, w in divided.items()}


def _plain(value):
    """A NumPy scalar or a 0-d array or tensor -> the Python number it holds; anything else as is."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value


def _number(value, kind):
    value = _plain(value)
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):  # 300.7 is no size to truncate
        raise TypeError(value)
    return kind(value)


def _numbers(value, name: str, kind=float) -> list:
    """A list, tuple, array or comma-separated string of numbers -> a list of `kind`."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    if isinstance(items, (bytes, dict, set)) or not hasattr(items, "__iter__"):
        raise NstError(f"{name} must be a list of numbers, got {value!r}")
    try:
        return [_number(v, kind) for v in items]
    except (TypeError, ValueError):
        raise NstError(f"{name} must be a list of {'whole ' if kind is int else ''}numbers, got {value!r}") from None


def _check_weight(name, value, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise NstError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise NstError(f"{name} must be {'positive' if positive else 'non-negative'}, got {value!r}")


NUMBER, BOOL, OTHER = "number", "bool", "other"


def option(default, kind: str, flag: Optional[str], *, recorded: bool = False, fingerprint: Optional[int] = None,
           **cli):
    """A field of Options with what else knows of it, in its metadata:
    kind: NUMBER, BOOL or OTHER, what resolve() checks it as first;
    flag: the command line's flag for it, or None for an option of the Python API only;
    cli: the flag's argparse settings (type, choices, action, help...), not its default:
    a flag not given leaves the field's;
    recorded: written into the image it makes (recipe.SETTINGS);
    fingerprint: its place in a checkpoint's fingerprint (checkpoint.FINGERPRINT_OPTIONS),
    None where resuming may change it."""
    metadata = {"kind": kind, "flag": flag, "cli": cli, "recorded": recorded, "fingerprint": fingerprint}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Options:
    size: Optional[int] = option(  # None: the last of `scales`, else 512
        None, NUMBER, "--size", recorded=True, type=int, help="long side of the output in pixels (512; demo 256)")
    steps: int = option(500, NUMBER, "--steps", recorded=True, type=int,
                        help="forward+backward passes per scale (500; demo 100)")
    initial_steps: Optional[int] = option(  # steps at the first of several scales (crowsonkb's initial iterations)
        None, NUMBER, "--initial-steps", recorded=True, type=int,
        help="steps at the first of the --scales (default: --steps)")
    content_weight: float = option(1.0, NUMBER, "--content-weight", recorded=True, fingerprint=0, type=float,
                                   help="alpha (1)")
    style_weight: Optional[float] = option(  # None: DEFAULT_STYLE_WEIGHT for the weights' convention
        None, NUMBER, "--style-weight", recorded=True, fingerprint=1, type=float,
        help="beta (gram: 1e4 for Caffe-convention weights, 5e7 for torchvision's; w2, mrf: 1e6)")
    tv_weight: float = option(0.0, NUMBER, "--tv-weight", recorded=True, fingerprint=2, type=float,
                              help="total-variation weight (0)")
    content_layers: object = option(  # None: the network's default (VGG: relu4_2)
        None, OTHER, "--content-layers", recorded=True, fingerprint=3,
        help="name[:weight],... (relu4_2; alexnet: relu4; nin: relu0,relu3,relu7,relu12)")
    style_layers: object = option(  # None: VGG: Gatys' five (gram, w2) or Li and Wand's two (mrf)
        None, OTHER, "--style-layers", recorded=True, fingerprint=4,
        help="name[:weight],...; weights are normalised to sum to 1 (equal) "
             "(relu1_1,relu2_1,relu3_1,relu4_1,relu5_1; mrf: relu3_1,relu4_1; "
             "alexnet: relu1..relu5; alexnet mrf: relu2,relu3; "
             "nin: relu0,relu3,relu7,relu12; nin mrf: relu3,relu7)")
    style_loss: str = option(  # gram (Gatys) | w2 (Wasserstein-2, crowsonkb) | mrf (Li and Wand, pystiche)
        "gram", OTHER, "--style-loss", recorded=True, fingerprint=15, choices=list(STYLE_LOSSES),
        help="gram: Gatys' Gram matrices | w2: Wasserstein-2 distance of the features' mean and "
             "covariance | mrf: nearest style patches, Li and Wand (gram)")
    mrf_variants: bool = option(  # mrf: also the style's patches rotated +-7.5 degrees and scaled +-5%
        False, BOOL, "--mrf-variants", recorded=True, fingerprint=16, action="store_true",
        help="mrf: also match the style's patches rotated by +-7.5 degrees and scaled by +-5%% "
             "(Li and Wand; 9x the style patches)")
    init: object = option(
        "content", OTHER, "--init",
        help="noise | gray | content | style | style_stats (noise with the style's colour mean and "
             "spread) | an image path | previous (a batch of video frames: each starts from the "
             "result before it, moved with the camera) (content)")
    optimizer: str = option("lbfgs", OTHER, "--optimizer", recorded=True, fingerprint=5, choices=list(OPTIMIZERS),
                            help="(lbfgs)")
    lr: Optional[float] = option(None, NUMBER, "--lr", recorded=True, fingerprint=6, type=float,
                                 help="step size (lbfgs 1, adam 0.02)")
    lbfgs_history: int = option(  # curvature pairs L-BFGS keeps (jcjohnson's -lbfgs_num_correction)
        10, NUMBER, "--lbfgs-history", recorded=True, fingerprint=7, type=int, help="curvature pairs L-BFGS keeps (10)")
    normalize_gradients: bool = option(  # each loss's gradient over its L1 norm (jcjohnson's option)
        False, BOOL, "--normalize-gradients", recorded=True, fingerprint=8, action="store_true",
        help="scale each loss layer's gradient to unit L1 norm times its weight")
    normalize_weights: bool = option(  # each layer's weight over its channel count (neural-style-pt's option)
        False, BOOL, "--normalize-weights", recorded=True, action="store_true",
        help="divide each layer's weight by its channel count (kept to the same sum)")
    avg_decay: float = option(  # > 0: the result is a moving average of the iterates with this decay
        0.0, NUMBER, "--avg-decay", recorded=True, fingerprint=14, type=float,
        help="output a moving average of the iterates with this decay, e.g. 0.99 (0: off)")
    seed: int = option(0, NUMBER, "--seed", recorded=True, type=int, help="random seed (0)")
    precision: Optional[str] = option(  # None: default_precision() of the run's devices
        None, OTHER, "--precision", recorded=True, fingerprint=9, choices=list(PRECISIONS),
        help="fp32: exact | tf32: TF32 convolutions and matmuls (GPU) | bf16: bf16 activations "
             "(GPU, or a CPU with bf16 support) (tf32 on a GPU that has it, NVIDIA Ampere or "
             "later, as PyTorch's convolutions; else fp32)")
    style_blend: Optional[Sequence[float]] = option(None, OTHER, "--style-blend", recorded=True, fingerprint=10,
                                                    type=csv_floats, help="one weight per style image")
    style_masks: Optional[Sequence] = option(  # one per style: where on the output it applies
        None, OTHER, "--style-masks", type=csv_paths,
        help="one mask image per style, comma-separated: each style paints where its mask is white")
    style_scale: float = option(1.0, NUMBER, "--style-scale", recorded=True, fingerprint=11, type=float,
                                help="style image size relative to the output (1)")
    style_size: Optional[int] = option(  # the style images' long side in pixels at every scale (not style_scale)
        None, NUMBER, "--style-size", recorded=True, fingerprint=12, type=int,
        help="style images' long side in pixels at every scale (instead of --style-scale)")
    preserve_colors: Optional[str] = option(
        None, OTHER, "--preserve-colors", recorded=True, fingerprint=13, choices=list(PRESERVE_COLORS[1:]),
        help="keep the content's colours: stylize luminance only, or recolour the style "
             "to the content's colour statistics (match: mean+covariance; histogram)")
    scales: Optional[Sequence[int]] = option(None, OTHER, "--scales", type=csv_ints,
                                             help="coarse-to-fine sizes, e.g. 256,512")
    min_scale: Optional[int] = option(  # coarse-to-fine from here to size in steps of sqrt(2) (crowsonkb's)
        None, NUMBER, "--min-scale", type=int,
        help="coarse-to-fine from this size up to --size in steps of sqrt(2) (instead of --scales)")
    report_every: Optional[int] = option(None, NUMBER, "--report-every", type=int,
                                         help="read the losses back every N steps (1 on the CPU, 20 on a GPU)")
    cuda_graph: Optional[bool] = option(  # None: capture the step in a CUDA graph where possible
        None, BOOL, "--no-cuda-graph", action="store_const", const=False, help="run each step eagerly on a GPU")
    checkpoint_every: int = option(0, NUMBER, "--checkpoint-every", type=int,
                                   help="steps between checkpoints (0: end only)")
    memory_limit: Optional[int] = option(  # bytes; None: what the device has free
        None, NUMBER, "--memory-limit", type=memory_amount,
        help="the memory the run may use, e.g. 8G (default: what the device has free)")
    fit_memory: bool = option(  # shrink the size to what fits instead of refusing
        False, BOOL, "--fit-memory", action="store_true",
        help="if the run cannot fit in memory, shrink --size to the largest that fits")
    low_memory: bool = option(  # CPU: no Winograd weight transforms (~415 MiB less for VGG-19), slower steps
        False, BOOL, "--low-memory", action="store_true",
        help="CPU: run the convolutions without Winograd's weight transforms, about 415 MiB less for "
             "VGG-19, with slower steps (chosen by itself where only that fits)")
    # What resolve() resolved them for, (styles, convention, network, devices); None: not resolved.
    resolved: Optional[tuple] = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> "Options":
        """Options(**kwargs), with an NstError naming the closest option for a misspelt one."""
        names = list(fields_where(lambda meta: True, cls))
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names + list(SETUP_ARGUMENTS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                if close and close[0] in SETUP_ARGUMENTS:
                    hint = f" (did you mean {close[0]!r}? an argument of nst_fast.stylize and StyleTransfer)"
                raise NstError(f"unknown option {key!r}{hint}; the options are the fields of nst_fast.Options")
        return cls(**kwargs)

    def resolve(self, n_styles: int = 1, convention: Optional[str] = "torchvision", network: str = "vgg19",
                devices=()) -> "Options":
        """A new Options with every default filled in for the run's number of styles, the
        weights' input convention, the network and the devices, and every value checked
        (an NstError for the first that is wrong); `resolved` holds what for. convention
        None: not known yet (the weights are not loaded); the style weight's default
        then waits for for_convention(). Options resolved already are returned as they
        are where they were resolved for the same, and refused where not."""
        resolved_for = (n_styles, convention, network, tuple(str(d) for d in devices))
        if self.resolved:
            return self._check_resolved_for(resolved_for)
        values = {name: getattr(self, name) for name in OPTION_FIELDS}
        for name in NUMBER_FIELDS + BOOL_FIELDS:  # np.int64(512) and torch.tensor(0.5) are numbers too
            values[name] = _plain(values[name])
        context = dict(n_styles=n_styles, convention=convention, network=network, devices=devices)
        for step in _RESOLVE_STEPS:
            step(values, **context)
        return _resolved_copy(self, resolved_for, **values)

    def _check_resolved_for(self, resolved_for) -> "Options":
        """These resolved options, where resolved for the same run (a convention not
        known when either was resolved matches any); else an NstError."""
        (styles, convention, network, devices), (now_styles, now_convention, now_network, now_devices) = \
            self.resolved, resolved_for
        same_convention = None in (convention, now_convention) or convention == now_convention
        if (styles, network, devices) == (now_styles, now_network, now_devices) and same_convention:
            return self
        raise NstError(f"these options were resolved for {styles} style image(s), weights of the {convention} "
                       f"convention, network {network} and devices {', '.join(devices) or 'unnamed'}; this run has "
                       f"{now_styles}, {now_convention}, {now_network} and {', '.join(now_devices)}: give them "
                       "unresolved")

    def for_convention(self, convention: str) -> "Options":
        """Resolved options with the style weight's default for weights of this input
        convention where none was given."""
        styles, known, network, devices = self.resolved
        if known == convention:
            return self
        resolved_for = (styles, convention, network, devices)
        if self.style_weight is not None:
            return _resolved_copy(self, resolved_for)
        return _resolved_copy(self, resolved_for, style_weight=default_style_weight(self.style_loss, convention))

    def with_images(self, **images) -> "Options":
        """Resolved options with images in place of what init or style_masks named (their
        paths, decoded once by the caller), or a start of a run (init, a (1, 3, H, W)
        tensor in [0, 1])."""
        assert set(images) <= {"init", "style_masks"}, images
        return _resolved_copy(self, self.resolved, **images)

    def sizes(self):
        """The long side at each scale: `scales`, or from min_scale up to size in steps
        of sqrt(2), or just size."""
        if self.scales:
            return self.scales
        if self.min_scale is None:
            return [self.size]
        sizes, i = [], 0
        while round(self.size / 2 ** (i / 2)) >= self.min_scale:
            sizes.insert(0, round(self.size / 2 ** (i / 2)))
            i += 1
        return sizes

    def style_side(self, size: int) -> int:
        """The style images' long side at a scale whose long side is `size`."""
        return self.style_size or max(1, round(size * self.style_scale))

    def steps_at(self, scale_index: int) -> int:
        """Steps at the scale_index-th scale: initial_steps (if given) at the first, steps after."""
        return self.initial_steps if scale_index == 0 and self.initial_steps is not None else self.steps


def default_style_weight(style_loss: str, convention: str) -> float:
    return DEFAULT_STYLE_WEIGHT[convention] if style_loss == "gram" else DEFAULT_STYLE_WEIGHT_SQUARED[style_loss]


def _resolved_copy(opts: Options, resolved_for: tuple, **changes) -> Options:
    out = dataclasses.replace(opts, **changes)
    object.__setattr__(out, "resolved", resolved_for)  # frozen: set as its own __init__ would
    return out


def fields_where(test, cls=Options) -> tuple:
    """The names of cls's option fields (those option() made) whose metadata passes
    test, in their order."""
    return tuple(field.name for field in dataclasses.fields(cls) if "kind" in field.metadata and test(field.metadata))


OPTION_FIELDS = fields_where(lambda meta: True)
NUMBER_FIELDS = fields_where(lambda meta: meta["kind"] == NUMBER)
BOOL_FIELDS = fields_where(lambda meta: meta["kind"] == BOOL)
RECORDED_FIELDS = fields_where(lambda meta: meta["recorded"])
FLAG_FIELDS = fields_where(lambda meta: meta["flag"] is not None)
# In fingerprint order, not the fields': the order is part of the hash that existing
# checkpoints must still match.
FINGERPRINT_FIELDS = tuple(sorted(fields_where(lambda meta: meta["fingerprint"] is not None),
                                  key=lambda name: Options.__dataclass_fields__[name].metadata["fingerprint"]))


# resolve()'s steps, in the order their errors are found. Each fills in or checks some
# of the values (a dict of the options' fields), given the run's context.


def _check_bools(v, **context):
    for name in BOOL_FIELDS:
        if not isinstance(v[name], bool) and not (name == "cuda_graph" and v[name] is None):
            raise NstError(f"{name} must be True or False, got {v[name]!r}")


def _resolve_style_loss(v, convention, network, **context):
    if v["style_loss"] not in STYLE_LOSSES:
        raise NstError(f"style_loss must be one of {', '.join(STYLE_LOSSES)}, got {v['style_loss']!r}")
    if v["mrf_variants"] and v["style_loss"] != "mrf":
        raise NstError("mrf_variants needs style_loss mrf")
    if v["style_weight"] is None and convention is not None:
        v["style_weight"] = default_style_weight(v["style_loss"], convention)
    content_default, style_default = default_layers(network, v["style_loss"])
    if v["content_layers"] is None:
        v["content_layers"] = content_default
    if v["style_layers"] is None:
        v["style_layers"] = style_default


def _resolve_size(v, **context):
    if v["scales"] is not None:
        scales = _numbers(v["scales"], "scales", int)
        if not scales or any(s < 16 for s in scales) or scales != sorted(set(scales)):
            raise NstError(f"scales must be increasing sizes of at least 16 pixels, got {v['scales']!r}")
        if v["size"] is not None and v["size"] != scales[-1]:
            raise NstError(f"size {v['size']!r} and scales ending at {scales[-1]} disagree; give one of them")
        v["scales"], v["size"] = scales, scales[-1]  # the output's size is the last scale's
    if v["size"] is None:
        v["size"] = 512


def _check_counts(v, **context):
    from ..nets.vgg import check_seed

    for name in ("size", "steps", "seed", "lbfgs_history"):
        if isinstance(v[name], bool) or not isinstance(v[name], int):
            raise NstError(f"{name} must be an integer, got {v[name]!r}")
    check_seed(v["seed"])
    if v["size"] < 16:
        raise NstError(f"size must be at least 16 pixels, got {v['size']}")
    if v["steps"] < 0:
        raise NstError(f"steps must be 0 or more, got {v['steps']}")
    initial = v["initial_steps"]
    if initial is not None and (isinstance(initial, bool) or not isinstance(initial, int) or initial < 0):
        raise NstError(f"initial_steps must be a whole number, 0 or more, got {initial!r}")
    if v["lbfgs_history"] < 1:
        raise NstError(f"lbfgs_history must be at least 1, got {v['lbfgs_history']}")


def _check_weights(v, **context):
    for name in ("content_weight", "style_weight", "tv_weight"):
        if v[name] is not None:  # a style weight of the weights' convention, once that is known
            _check_weight(name, v[name])
    _check_weight("style_scale", v["style_scale"], positive=True)
    style_size = v["style_size"]
    if style_size is not None and (isinstance(style_size, bool) or not isinstance(style_size, int) or style_size < 16):
        raise NstError(f"style_size must be a whole number of pixels, at least 16, got {style_size!r}")
    _check_weight("avg_decay", v["avg_decay"])
    if v["avg_decay"] >= 1:
        raise NstError(f"avg_decay must be below 1 (0: off), got {v['avg_decay']!r}")
    if v["lr"] is not None:
        _check_weight("lr", v["lr"], positive=True)


def _resolve_layers(v, network, **context):
    v["content_layers"] = parse_layers(v["content_layers"], "content", network)
    v["style_layers"] = parse_layers(v["style_layers"], "style", network)
    if v["normalize_weights"]:
        v["content_layers"] = _per_channel(v["content_layers"], network)
        v["style_layers"] = _per_channel(v["style_layers"], network)
    total = sum(v["style_layers"].values())
    v["style_layers"] = {k: w / total for k, w in v["style_layers"].items()}


def _resolve_choices(v, devices, **context):
    init = v["init"]
    if isinstance(init, (str, os.PathLike)) and str(init) not in INITS and not os.path.isfile(init):
        raise NstError(f"init must be one of {', '.join(INITS)} or an image file, got {str(init)!r}")
    if v["optimizer"] not in OPTIMIZERS:
        raise NstError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {v['optimizer']!r}")
    if v["precision"] is None:
        v["precision"] = default_precision(devices)
    if v["precision"] not in PRECISIONS:
        raise NstError(f"precision must be one of {', '.join(PRECISIONS)}, got {v['precision']!r}")
    if v["preserve_colors"] not in PRESERVE_COLORS:
        raise NstError(f"preserve_colors must be luminance, match or histogram, got {v['preserve_colors']!r}")


def _resolve_styles(v, n_styles, **context):
    """One blend weight per style, summing to 1; one mask per style, if any."""
    blend = _numbers([1.0 / n_styles] * n_styles if v["style_blend"] is None else v["style_blend"], "style_blend")
    if len(blend) != n_styles:
        raise NstError(f"{len(blend)} style blend weights given for {n_styles} style images")
    for b in blend:
        _check_weight("style blend weight", b)
    if sum(blend) <= 0:
        raise NstError("style blend weights must not all be zero")
    top = max(blend)  # first: the sum of huge weights would overflow
    v["style_blend"] = [b / top / sum(c / top for c in blend) for b in blend]
    masks = v["style_masks"]
    if masks is not None:
        if isinstance(masks, (str, bytes)) or not isinstance(masks, Sequence):
            raise NstError("style_masks must be a list with one mask per style image")
        if len(masks) != n_styles:
            raise NstError(f"{len(masks)} style masks given for {n_styles} style images")


def _check_scales(v, **context):
    min_scale = v["min_scale"]
    if min_scale is not None:
        if isinstance(min_scale, bool) or not isinstance(min_scale, int) or not 16 <= min_scale <= v["size"]:
            raise NstError(f"min_scale must be a whole number of pixels from 16 to size ({v['size']}), "
                           f"got {min_scale!r}")
        if v["scales"] is not None:
            raise NstError("give scales or min_scale, not both")
    if v["initial_steps"] is not None and v["scales"] is None and min_scale is None:
        raise NstError("initial_steps sets the steps at the first of several scales: give scales or min_scale "
                       "too (or just steps)")


def _resolve_intervals(v, devices, **context):
    every = v["checkpoint_every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise NstError(f"checkpoint_every must be 0 (off) or a number of steps, got {every!r}")
    every = v["report_every"]
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise NstError(f"report_every must be a whole number, at least 1, got {every!r}")
    v["report_every"] = report_interval(every, _device_type(devices[0]) if devices else "cpu")
    if v["memory_limit"] is not None:
        _check_weight("memory_limit (bytes)", v["memory_limit"], positive=True)


_RESOLVE_STEPS = (_check_bools, _resolve_style_loss, _resolve_size, _check_counts, _check_weights, _resolve_layers,
                  _resolve_choices, _resolve_styles, _check_scales, _resolve_intervals)
