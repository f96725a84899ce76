"""VGG-19 (and VGG-16) feature extractor: layer names, weights, input conventions.

Weights come from torchvision ("imagenet"), a local state dict, or a seeded
random initialisation ("random"). Two input conventions exist:
  torchvision: RGB in [0, 1], normalised by the ImageNet mean and std;
  caffe:       BGR in [0, 255] minus the per-channel mean (Gatys, jcjohnson).
"""
import os
import re

import torch
from torch import nn

from .errors import NstError, WeightsUnavailable
from .winograd import WinogradConv2d

# torchvision's vgg19().features and vgg16().features: output channels per conv, "M" per pool.
CONFIGS = {
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
NETWORK_TITLES = {"vgg19": "VGG-19", "vgg16": "VGG-16"}
POOLINGS = ("max", "avg", "l2")


def check_network(network: str) -> str:
    if network not in CONFIGS:
        raise NstError(f"network must be one of {', '.join(CONFIGS)}, got {network!r}")
    return network


def layer_names(network: str = "vgg19") -> list:
    """Module names of the network's features, e.g. conv1_1, relu1_1, ..., pool5."""
    names, block, conv = [], 1, 0
    for item in CONFIGS[check_network(network)]:
        if item == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return names


_INDEX = {network: {name: i for i, name in enumerate(layer_names(network))} for network in CONFIGS}
LAYER_NAMES = layer_names("vgg19")
LAYER_INDEX = _INDEX["vgg19"]


def layer_index(name: str, network: str = "vgg19") -> int:
    return _INDEX[check_network(network)][name]
CONVENTIONS = ("torchvision", "caffe")
_TORCHVISION_MEAN, _TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def layer_channels(name: str) -> int:
    block = int(re.match(r"[a-z]+(\d)", name).group(1))
    return min(64 * 2 ** (block - 1), 512)


def layer_downsampling(name: str) -> int:
    """How many times smaller than the input each side of this layer's output is
    (the same in VGG-16 and VGG-19: a pool ends each block)."""
    block = int(re.match(r"[a-z]+(\d)", name).group(1))
    return 2 ** (block if name.startswith("pool") else block - 1)


def check_layer_names(names, what="layer", network="vgg19"):
    index = _INDEX[check_network(network)]
    for name in names:
        if name not in index:
            last = layer_names(network)[-2]  # the last ReLU
            raise NstError(f"unknown {what} {name!r}; {NETWORK_TITLES[network]} layers are conv1_1, relu1_1, "
                           f"... {last}, pool1..pool5")


class L2Pool2d(nn.Module):
    """2x2 root-mean-square pooling: between average and max pooling in how much the
    strongest activation of a window counts. The epsilon keeps the gradient finite
    where a window is all zeros (common after a ReLU)."""

    EPS = 1e-8

    def forward(self, x):
        return nn.functional.avg_pool2d(x * x, 2, 2).add_(self.EPS).sqrt_()


def _pool(pooling: str) -> nn.Module:
    return {"max": lambda: nn.MaxPool2d(2, 2), "avg": lambda: nn.AvgPool2d(2, 2), "l2": L2Pool2d}[pooling]()


def _build(depth: int, pooling: str, network: str = "vgg19") -> nn.Sequential:
    layers, in_channels = [], 3
    for item in CONFIGS[network]:
        if item == "M":
            layers.append(_pool(pooling))
        else:
            layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = item
    return nn.Sequential(*layers[:depth])


def _features_only(state: dict) -> dict:
    """Keys as in vgg19().features ("0.weight"), from a full or features-only state dict."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("features."):
            out[key.removeprefix("features.")] = value
        elif re.fullmatch(r"\d+\.(weight|bias)", key):
            out[key] = value
    return out


def _read_state_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise WeightsUnavailable(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(f"cannot read weights file {path}: {exc}".splitlines()[0]) from None
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"weights file {path} does not hold a state dict")
    return state


def _imagenet_state(network: str) -> dict:
    from torchvision.models import VGG16_Weights, VGG19_Weights

    weights = {"vgg19": VGG19_Weights, "vgg16": VGG16_Weights}[network].IMAGENET1K_V1
    title = NETWORK_TITLES[network]
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:
        raise WeightsUnavailable(
            f"cannot download torchvision's {title} weights ({type(exc).__name__}). Pass --weights "
            f"PATH (or set NST_FAST_WEIGHTS) to a {title} state dict, or --weights random for a smoke run"
        ) from None


def resolve_weights(weights=None) -> str:
    return weights or os.environ.get("NST_FAST_WEIGHTS") or "imagenet"


def guess_convention(weights: str, state: dict) -> str:
    """A file's own "convention" entry wins; else "caffe" if its name says so."""
    stated = state.get("convention") if isinstance(state.get("convention"), str) else None
    if stated in CONVENTIONS:
        return stated
    if weights not in ("imagenet", "random") and "caffe" in os.path.basename(weights).lower():
        return "caffe"
    return "torchvision"


def random_state(seed: int = 0, network: str = "vgg19") -> dict:
    """A seeded Kaiming-normal VGG (as torchvision initialises it), for smoke runs and tests."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for i, m in enumerate(_build(len(CONFIGS[check_network(network)]) * 2, "max", network)):
        if isinstance(m, nn.Conv2d):
            std = (2.0 / (m.out_channels * 9)) ** 0.5
            state[f"{i}.weight"] = torch.randn(m.weight.shape, generator=gen) * std
            state[f"{i}.bias"] = torch.zeros(m.out_channels)
    return state


def load_weights(weights=None, convention="auto", seed=0, network="vgg19"):
    """-> (features state dict, input convention, a name for messages).

    weights: "imagenet", "random", a path, or None for $NST_FAST_WEIGHTS / "imagenet".
    network: "vgg19" or "vgg16", for "imagenet" and "random".
    """
    weights = resolve_weights(weights)
    check_network(network)
    if convention not in ("auto",) + CONVENTIONS:
        raise NstError(f"weights convention must be auto, torchvision or caffe, got {convention!r}")
    if weights == "random":
        return random_state(seed, network), "torchvision" if convention == "auto" else convention, "random"
    state = _imagenet_state(network) if weights == "imagenet" else _read_state_file(weights)
    if convention == "auto":
        convention = guess_convention(weights, state)
    features = _features_only(state)
    if not features:
        raise WeightsUnavailable(f"weights file {weights} holds no VGG features (keys like features.0.weight)")
    return features, convention, weights


class VGGFeatures(nn.Module):
    """VGG-19 (or VGG-16) truncated after the deepest requested layer; returns {name: activation}."""

    def __init__(self, layers, state: dict, convention: str = "torchvision", pooling="max", source="weights",
                 network="vgg19"):
        super().__init__()
        if pooling not in POOLINGS:
            raise NstError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        layers = list(dict.fromkeys(layers))
        check_layer_names(layers, network=network)
        self.layers, self.network = layers, network
        self._moves = {}  # module index -> the device it and the modules after it run on (place())
        self.convention = convention
        depth = max(layer_index(n, network) for n in layers) + 1
        self.net = _build(depth, pooling, network)
        # A requested conv output would be overwritten by the in-place ReLU after it.
        for name in layers:
            i = layer_index(name, network)
            if name.startswith("conv") and i + 1 < depth:
                self.net[i + 1].inplace = False
        self._load(state, source)
        # Winograd for every 3x3 conv but conv1_1, whose 3 input channels leave it
        # too little work to gain from it; each falls back to F.conv2d off the CPU.
        for i, module in enumerate(self.net):
            if isinstance(module, nn.Conv2d) and module.in_channels > 3:
                self.net[i] = WinogradConv2d(module)
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
        wanted = {f"{i}.{p}" for i, m in enumerate(self.net) if isinstance(m, nn.Conv2d) for p in ("weight", "bias")}
        missing = wanted - state.keys()
        if missing:
            convs = [i for i, m in enumerate(self.net) if isinstance(m, nn.Conv2d)]
            names = layer_names(self.network)
            have = [names[i] for i in convs if f"{i}.weight" in state]
            deepest = f"its deepest layer is {have[-1]}" if have else "it holds no VGG conv layers"
            raise WeightsUnavailable(
                f"weights {source} lack layers needed for {', '.join(self.layers)}: {deepest}"
            )
        try:
            self.net.load_state_dict({k: state[k] for k in wanted})
        except RuntimeError as exc:
            reason = str(exc).splitlines()[-1].strip()
            raise WeightsUnavailable(f"weights {source} do not fit {NETWORK_TITLES[self.network]}: {reason}") from None

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the network's input convention."""
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        return x.flip(1) if self.convention == "caffe" else x

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

    def forward(self, image: torch.Tensor) -> dict:
        x = self.preprocess(image).contiguous(memory_format=torch.channels_last)
        wanted = {layer_index(n, self.network): n for n in self.layers}
        out = {}
        for i, module in enumerate(self.net):
            if i in self._moves:
                x = x.to(self._moves[i])
            x = module(x)
            if i in wanted:
                out[wanted[i]] = x
        return out
