"""VGG-19 (and VGG-16/13/11, AlexNet, NIN) feature extractor: layer names, weights, input conventions.

Weights come from torchvision ("imagenet"), a local state dict, or a seeded
random initialisation ("random"). Two input conventions exist:
  torchvision: RGB in [0, 1], normalised by the ImageNet mean and std;
  caffe:       BGR in [0, 255] minus the per-channel mean (Gatys, jcjohnson).
"""
import os
import pickle
import re
from typing import NamedTuple

import torch
from torch import nn

from ..errors import NstError, WeightsUnavailable
from ..ops import relu_pool as pooling
from ..ops.winograd import WinogradConv2d
from . import caffemodel, hub

# torchvision's vgg19/16/13/11().features: output channels per conv, "M" per pool.
CONFIGS = {
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}
NETWORK_TITLES = {"vgg19": "VGG-19", "vgg16": "VGG-16", "vgg13": "VGG-13", "vgg11": "VGG-11", "alexnet": "AlexNet",
                  "nin": "NIN"}
POOLINGS = ("max", "avg", "l2")
# How the first convolution pads the image's border: with zeros (the networks' own
# padding), or with the border pixels repeated or mirrored, so that the border does
# not look like an edge to the network (crowsonkb's replicate, against edge artifacts).
PADDINGS = ("zeros", "replicate", "reflect")


class Layer(NamedTuple):
    """One module of a network's features: kind is conv, relu, pool or drop; channels
    (conv) the output channels; kernel, stride, padding as in nn.Conv2d / nn.MaxPool2d;
    ceil: the pool rounds its output size up (Caffe's pooling)."""
    name: str
    kind: str
    channels: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    ceil: bool = False


def _vgg_table(config) -> list:
    layers, block, conv = [], 1, 0
    for item in config:
        if item == "M":
            layers.append(Layer(f"pool{block}", "pool", kernel=2, stride=2))
            block, conv = block + 1, 0
        else:
            conv += 1
            layers += [Layer(f"conv{block}_{conv}", "conv", item, 3, 1, 1), Layer(f"relu{block}_{conv}", "relu")]
    return layers


def _nin_table() -> list:
    """Network-in-Network (Lin et al.) as Caffe's nin_imagenet and neural-style-pt's
    nin_imagenet.pth lay it out, up to relu12: module i holds that file's features.i
    (the dropout keeps its index; Caffe's ReLU names skip relu4)."""
    def pool(name):
        return Layer(name, "pool", kernel=3, stride=2, ceil=True)

    def conv(name, channels, kernel=1, stride=1, padding=0):
        return Layer(name, "conv", channels, kernel, stride, padding)

    relu = lambda name: Layer(name, "relu")  # noqa: E731
    return [conv("conv1", 96, 11, 4), relu("relu0"), conv("cccp1", 96), relu("relu1"), conv("cccp2", 96),
            relu("relu2"), pool("pool1"),
            conv("conv2", 256, 5, 1, 2), relu("relu3"), conv("cccp3", 256), relu("relu5"), conv("cccp4", 256),
            relu("relu6"), pool("pool2"),
            conv("conv3", 384, 3, 1, 1), relu("relu7"), conv("cccp5", 384), relu("relu8"), conv("cccp6", 384),
            relu("relu9"), pool("pool3"), Layer("drop", "drop"),
            conv("conv4-1024", 1024, 3, 1, 1), relu("relu10"), conv("cccp7-1024", 1024), relu("relu11"),
            conv("cccp8-1024", 1000), relu("relu12")]


def _alexnet_table() -> list:
    """torchvision's alexnet().features (module i is its features.i), with pystiche's
    layer names: conv1, relu1, pool1, ... relu5, pool5."""
    convs = {1: (64, 11, 4, 2), 2: (192, 5, 1, 2), 3: (384, 3, 1, 1), 4: (256, 3, 1, 1), 5: (256, 3, 1, 1)}
    layers = []
    for i, (channels, kernel, stride, padding) in convs.items():
        layers += [Layer(f"conv{i}", "conv", channels, kernel, stride, padding), Layer(f"relu{i}", "relu")]
        if i in (1, 2, 5):
            layers.append(Layer(f"pool{i}", "pool", kernel=3, stride=2))
    return layers


TABLES = {**{name: _vgg_table(config) for name, config in CONFIGS.items()}, "alexnet": _alexnet_table(),
          "nin": _nin_table()}


def check_network(network: str) -> str:
    if network not in TABLES:
        raise NstError(f"network must be one of {', '.join(TABLES)}, got {network!r}")
    return network


def layer_names(network: str = "vgg19") -> list:
    """Module names of the network's features, e.g. conv1_1, relu1_1, ..., pool5."""
    return [layer.name for layer in TABLES[check_network(network)]]


_INDEX = {network: {name: i for i, name in enumerate(layer_names(network))} for network in TABLES}
# {conv layer name: module index} per network: how files keyed by layer name map onto the modules.
_CONV_INDEX = {network: {layer.name: i for i, layer in enumerate(table) if layer.kind == "conv"}
               for network, table in TABLES.items()}
LAYER_NAMES = layer_names("vgg19")
LAYER_INDEX = _INDEX["vgg19"]


def layer_index(name: str, network: str = "vgg19") -> int:
    return _INDEX[check_network(network)][name]


def _pooled(size: int, layer: Layer) -> int:
    """Output size of a pool, with PyTorch's rule for ceil mode (the last window
    must start inside the input)."""
    out = (size - layer.kernel + (layer.stride - 1 if layer.ceil else 0)) // layer.stride + 1
    if layer.ceil and (out - 1) * layer.stride >= size:
        out -= 1
    return out


def walk(height: int, width: int, depth: int = None, network: str = "vgg19"):
    """Yield (layer, in_channels, out_channels, in_h, in_w, out_h, out_w) per module of
    the network's first `depth` modules for a height x width input; out sizes below 1
    mean the input is too small for that module."""
    h, w, c = height, width, 3
    for layer in TABLES[check_network(network)][:depth]:
        oh, ow, c_out = h, w, c
        if layer.kind == "conv":
            c_out = layer.channels
            oh, ow = ((s + 2 * layer.padding - layer.kernel) // layer.stride + 1 for s in (h, w))
        elif layer.kind == "pool":
            oh, ow = (_pooled(s, layer) if s >= 1 else 0 for s in (h, w))
        yield layer, c, c_out, h, w, oh, ow
        h, w, c = oh, ow, c_out


def layer_shape(name: str, height: int, width: int, network: str = "vgg19") -> tuple:
    """(channels, height, width) of layer `name`'s output for a height x width input."""
    for layer, _, c, _, _, h, w in walk(height, width, layer_index(name, network) + 1, network):
        pass
    return c, h, w


def layer_channels(name: str, network: str = "vgg19") -> int:
    return layer_shape(name, 1, 1, network)[0]


def min_side(names, network: str = "vgg19") -> int:
    """The smallest square input whose every module up to the deepest of `names` has an
    output of at least one pixel (VGG: 2 ** pools; NIN: 11 for conv1, more deeper)."""
    depth = max(layer_index(n, network) for n in names) + 1
    side = 1
    while any(min(oh, ow) < 1 for *_, oh, ow in walk(side, side, depth, network)):
        side += 1
    return side


def check_layer_names(names, what="layer", network="vgg19"):
    index = _INDEX[check_network(network)]
    for name in names:
        if name not in index:
            table = TABLES[network]
            last_relu = [layer.name for layer in table if layer.kind == "relu"][-1]
            pools = [layer.name for layer in table if layer.kind == "pool"]
            raise NstError(f"unknown {what} {name!r}; {NETWORK_TITLES[network]} layers are {table[0].name}, "
                           f"{table[1].name}, ... {last_relu}, {pools[0]}..{pools[-1]}")


CONVENTIONS = ("torchvision", "caffe")
_TORCHVISION_MEAN, _TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class L2Pool2d(nn.Module):
    """Root-mean-square pooling: between average and max pooling in how much the
    strongest activation of a window counts. The epsilon keeps the gradient finite
    where a window is all zeros (common after a ReLU)."""

    EPS = 1e-8

    def __init__(self, kernel: int = 2, stride: int = 2, ceil_mode: bool = False):
        super().__init__()
        self.kernel, self.stride, self.ceil_mode = kernel, stride, ceil_mode

    def forward(self, x):
        return nn.functional.avg_pool2d(x * x, self.kernel, self.stride, ceil_mode=self.ceil_mode) \
            .add_(self.EPS).sqrt_()


class _Normalize(torch.autograd.Function):
    """(image - mean) / std, written channels-last, and its gradient grad / std, written
    contiguous: the expression's ops and rounding without the layout copies around it
    (the optimiser takes the image's gradient contiguous)."""

    @staticmethod
    def forward(ctx, image, mean, std):
        out = torch.empty_like(image, memory_format=torch.channels_last)
        torch.sub(image, mean, out=out).div_(std)
        ctx.save_for_backward(std)
        return out

    @staticmethod
    def backward(ctx, grad):
        (std,) = ctx.saved_tensors
        out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        return torch.div(grad, std, out=out), None, None


def _pool(pooling: str, layer: Layer) -> nn.Module:
    kind = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "l2": L2Pool2d}[pooling]
    return kind(layer.kernel, layer.stride, ceil_mode=layer.ceil)


def _build(depth: int, pooling: str, network: str = "vgg19", padding: str = "zeros") -> nn.Sequential:
    modules = []
    for layer, c_in, c_out, *_ in walk(1, 1, depth, network):
        if layer.kind == "conv":
            mode = "zeros" if modules else padding
            modules.append(nn.Conv2d(c_in, c_out, layer.kernel, layer.stride, layer.padding, padding_mode=mode))
        elif layer.kind == "relu":
            modules.append(nn.ReLU(inplace=True))
        elif layer.kind == "pool":
            modules.append(_pool(pooling, layer))
        else:
            modules.append(nn.Identity())  # dropout, as in evaluation
    return nn.Sequential(*modules)


def check_padding(padding: str, network: str = "vgg19") -> str:
    if padding not in PADDINGS:
        raise NstError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    if padding != "zeros" and TABLES[network][0].padding == 0:
        raise NstError(f"{NETWORK_TITLES[network]}'s first convolution does not pad: padding must be zeros")
    return padding


def _shape_str(shape) -> str:
    return "x".join(map(str, shape))


def winograd_fits(layer: Layer, in_channels: int) -> bool:
    """Whether VGGFeatures runs this layer by Winograd: a 3x3, stride-1, padding-1
    convolution with more than 3 input channels (conv1_1 has too little work to gain)."""
    return (layer.kind, layer.kernel, layer.stride, layer.padding) == ("conv", 3, 1, 1) and in_channels > 3


def _unwrap(state: dict) -> dict:
    """A checkpoint's {"state_dict": ...} -> the state dict inside it."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        return state["state_dict"]
    return state


def _features_only(state: dict, network: str) -> dict:
    """Keys as in vgg19().features ("0.weight"), from a full or features-only state
    dict, or from one keyed by layer name ("conv1_1.weight", as Caffe conversions and
    Gatys et al.'s own PyTorch weights are)."""
    convs = _CONV_INDEX[network]
    out = {}
    for key, value in _unwrap(state).items():
        key = key.removeprefix("module.")
        name, _, param = key.rpartition(".")
        if key.startswith("features."):
            out[key.removeprefix("features.")] = value
        elif re.fullmatch(r"\d+\.(weight|bias)", key):
            out[key] = value
        elif name in convs and param in ("weight", "bias"):
            out[f"{convs[name]}.{param}"] = value
    return out


def _by_layer_name(state: dict, network: str) -> bool:
    convs = _CONV_INDEX[network]
    return any(key.removeprefix("module.").rpartition(".")[0] in convs for key in _unwrap(state))


def _load_failure(exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in a line (torch's own message
    is a paragraph on its loading options)."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
        if found:  # a pickled model or training state, not just tensors
            return (f"it holds a {found.group(1)} object, and only tensors are read from a file (no code runs); "
                    "save the model's state_dict() instead")
        return "it is not a PyTorch weights file"
    if "PytorchStreamReader" in text:
        return "the file is cut short or corrupt (download it again)"
    return text.splitlines()[0] if text else type(exc).__name__


def _read_state_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise WeightsUnavailable(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(f"cannot read weights file {path}: {_load_failure(exc)}") from None
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"weights file {path} does not hold a state dict")
    return state


def _imagenet_state(network: str) -> dict:
    if network == "nin":
        raise WeightsUnavailable("torchvision has no NIN weights: give weights PATH, a NIN state dict "
                                 "(neural-style-pt's models/nin_imagenet.pth), or weights random for a smoke run")
    from torchvision import models

    family = models.AlexNet_Weights if network == "alexnet" else getattr(models, f"VGG{network[3:]}_Weights")
    return _read_state_file(hub.verified(family.IMAGENET1K_V1.url, NETWORK_TITLES[network]))


def resolve_weights(weights=None) -> str:
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise NstError(f"weights must be 'imagenet', 'random' or a file path, got {type(weights).__name__}")
    return os.fspath(weights) if weights else os.environ.get("NST_FAST_WEIGHTS") or "imagenet"


def guess_convention(weights: str, state: dict) -> str:
    """A file's own "convention" entry wins; else "caffe" if its name says so."""
    stated = state.get("convention") if isinstance(state.get("convention"), str) else None
    if stated in CONVENTIONS:
        return stated
    if weights not in ("imagenet", "random") and "caffe" in os.path.basename(weights).lower():
        return "caffe"
    return "torchvision"


MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise NstError(f"seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    return seed


def random_state(seed: int = 0, network: str = "vgg19") -> dict:
    """Seeded Kaiming-normal weights (as torchvision initialises VGG), for smoke runs and tests."""
    gen = torch.Generator().manual_seed(check_seed(seed))
    state = {}
    for i, m in enumerate(_build(len(TABLES[check_network(network)]), "max", network)):
        if isinstance(m, nn.Conv2d):
            std = (2.0 / (m.out_channels * m.kernel_size[0] * m.kernel_size[1])) ** 0.5
            state[f"{i}.weight"] = torch.randn(m.weight.shape, generator=gen) * std
            state[f"{i}.bias"] = torch.zeros(m.out_channels)
    return state


def load_weights(weights=None, convention="auto", seed=0, network="vgg19"):
    """-> (features state dict, input convention, a name for messages).

    weights: "imagenet", "random", a path (a PyTorch state dict, or a Caffe
    .caffemodel, whose conv layers are found by name), or None for
    $NST_FAST_WEIGHTS / "imagenet". NIN's only weights are Caffe's: "auto" takes the
    caffe convention for it.
    """
    weights = resolve_weights(weights)
    check_network(network)
    if convention not in ("auto",) + CONVENTIONS:
        raise NstError(f"weights convention must be auto, torchvision or caffe, got {convention!r}")
    if weights == "random":
        return random_state(seed, network), "torchvision" if convention == "auto" else convention, "random"
    caffe_file = weights.lower().endswith(".caffemodel")
    if weights == "imagenet":
        state = _imagenet_state(network)
    elif caffe_file:
        if not os.path.isfile(weights):
            raise WeightsUnavailable(f"weights file not found: {weights}")
        convs = _CONV_INDEX[network]
        state = caffemodel.features_state(weights, convs)
    else:
        state = _read_state_file(weights)
    if convention == "auto":
        caffe_origin = network == "nin" or _by_layer_name(state, network)  # Caffe's weights, converted
        convention = "caffe" if caffe_origin and "convention" not in state else guess_convention(weights, state)
    features = _features_only(state, network)
    if not features:
        title = NETWORK_TITLES[network]
        first = ", ".join(list(_CONV_INDEX[network])[:2])
        what = (f"none of {title}'s conv layers ({first}, ...)" if caffe_file
                else f"no {title} features (keys like features.0.weight or {first.split(',')[0]}.weight)")
        raise WeightsUnavailable(f"weights file {weights} holds {what}")
    return features, convention, weights


class VGGFeatures(nn.Module):
    """VGG-19 (or another network of TABLES) truncated after the deepest requested layer; returns
    {name: activation}."""

    def __init__(self, layers, state: dict, convention: str = "torchvision", pooling="max", source="weights",
                 network="vgg19", padding="zeros"):
        super().__init__()
        if pooling not in POOLINGS:
            raise NstError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        check_padding(padding, network)
        layers = list(dict.fromkeys(layers))
        check_layer_names(layers, network=network)
        self.layers, self.network = layers, network
        self._moves = {}  # module index -> the device it and the modules after it run on (place())
        self.convention = convention
        depth = max(layer_index(n, network) for n in layers) + 1
        self.net = _build(depth, pooling, network, padding)
        # A requested conv output would be overwritten by the in-place ReLU after it.
        for name in layers:
            i = layer_index(name, network)
            if TABLES[network][i].kind == "conv" and i + 1 < depth:
                self.net[i + 1].inplace = False
        self._load(state, source)
        # Each Winograd layer falls back to F.conv2d off the CPU.
        for i, (layer, c_in, *_) in enumerate(walk(1, 1, depth, network)):
            if winograd_fits(layer, c_in):
                self.net[i] = WinogradConv2d(self.net[i])
        # NHWC convolutions: ~1.3x faster fwd+bwd through oneDNN on the CPU, and the
        # layout cuDNN's tensor-core kernels want on a GPU.
        self.net.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()
        mean, std = _TORCHVISION_MEAN, _TORCHVISION_STD
        if convention == "caffe":
            # 255 * x - mean, written as (x - mean / 255) / (1 / 255); RGB order, flipped later.
            mean, std = [m / 255.0 for m in _CAFFE_MEAN_BGR[::-1]], (1 / 255.0,) * 3
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def _load(self, state: dict, source: str):
        title = NETWORK_TITLES[self.network]
        expected = {f"{i}.{name}": p.shape for i, m in enumerate(self.net) if isinstance(m, nn.Conv2d)
                    for name, p in m.named_parameters()}
        # Shapes first: another network's file usually has some of these keys too.
        for key, shape in expected.items():
            if key in state and tuple(state[key].shape) != tuple(shape):
                raise WeightsUnavailable(
                    f"weights {source} do not fit {title}: features.{key} is {_shape_str(state[key].shape)}, "
                    f"{title}'s {layer_names(self.network)[int(key.split('.')[0])]} needs {_shape_str(shape)}")
        if expected.keys() - state.keys():
            convs = [i for i, m in enumerate(self.net) if isinstance(m, nn.Conv2d)]
            names = layer_names(self.network)
            have = [names[i] for i in convs if f"{i}.weight" in state]
            deepest = f"its deepest layer is {have[-1]}" if have else "it holds none of its conv layers"
            raise WeightsUnavailable(
                f"weights {source} lack layers needed for {', '.join(self.layers)}: {deepest}"
            )
        for key in expected:  # else the first step's loss is NaN, and the advice on that misleads
            if not torch.isfinite(state[key]).all():
                raise WeightsUnavailable(f"weights {source} are damaged: features.{key} "
                                         f"({layer_names(self.network)[int(key.split('.')[0])]}) holds NaN or "
                                         "infinite values")
        self.net.load_state_dict({k: state[k] for k in expected})

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the network's input convention, channels-last."""
        mean, std = self.mean.to(image.dtype), self.std.to(image.dtype)
        if self.convention == "caffe":
            return ((image - mean) / std).flip(1).contiguous(memory_format=torch.channels_last)
        return _Normalize.apply(image, mean, std)

    def use_winograd(self, enabled: bool) -> None:
        """Whether the CPU convolutions run by Winograd (faster; each holds two weight
        transforms, 8x its weights) or as ordinary ones, their transforms freed."""
        for module in self.net:
            if isinstance(module, WinogradConv2d):
                module.set_enabled(enabled)

    def place(self, devices, split_at) -> "VGGFeatures":
        """Spread the network over several devices (model parallelism): the modules
        from split_at[k] (a layer name) on run on devices[k + 1], those before the
        first split on devices[0] with the preprocessing. Each feature stays on the
        device that made it."""
        if len(split_at) != len(devices) - 1:
            raise NstError(f"{len(devices)} devices need {len(devices) - 1} split layer(s), got {len(split_at)}")
        check_layer_names(split_at, "split layer", network=self.network)
        starts = [layer_index(n, self.network) for n in split_at]
        if starts != sorted(set(starts)) or starts[0] == 0 or starts[-1] >= len(self.net):
            raise NstError(f"split layers must be in network order, after conv1_1 and up to "
                           f"{layer_names(self.network)[len(self.net) - 1]}, got {', '.join(split_at)}")
        self.to(devices[0])
        self._moves.clear()
        for start, end, device in zip(starts, starts[1:] + [len(self.net)], devices[1:]):
            self.net[start:end].to(device)
            self._moves[start] = device
        return self

    def tappable(self, name: str) -> bool:
        """Whether forward() can run a tap at this layer: an in-place ReLU of the network."""
        i = layer_index(name, self.network)
        return i < len(self.net) and isinstance(self.net[i], nn.ReLU) and self.net[i].inplace

    def forward(self, image: torch.Tensor, taps: dict = None) -> dict:
        """-> {layer name: activation}. taps: {name of a tappable() layer: fn(its input) ->
        its output}, run instead of that ReLU (a loss fused with it)."""
        x = self.preprocess(image)
        wanted = {layer_index(n, self.network): n for n in self.layers}
        tapped = {}
        for name, fn in (taps or {}).items():
            if not self.tappable(name):
                raise ValueError(f"no tap at {name}: not an in-place ReLU of the network")
            tapped[layer_index(name, self.network)] = fn
        out = {}
        pooled = None  # the pool's output where the ReLU before it ran both (pooling.py)
        for i, module in enumerate(self.net):
            if i in self._moves:
                x = x.to(self._moves[i])
            if pooled is not None:
                x, pooled = pooled, None
            elif i in tapped:
                x = tapped[i](x)
            elif i + 1 < len(self.net) and i + 1 not in self._moves and pooling.fits(module, self.net[i + 1], x):
                x, pooled = pooling.relu_max_pool2(x)
            else:
                x = module(x)
            if i in wanted:
                out[wanted[i]] = x
        return out
