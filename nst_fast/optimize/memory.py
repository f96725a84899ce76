"""How much memory a run needs, before it starts.

`estimate_bytes` is a sum over what is alive at the peak of one optimisation
step of optimize.loop.Loop (the backward of GatysLoss), not a simulation:

  weights      the truncated VGG's conv weights and biases (fp32; bf16
               autocast adds a bf16 copy of each, kept for the backward; on
               the CPU each Winograd layer adds two 36/9 = 4x weight
               transforms, forward and input gradient, in the compute dtype)
  scratch      CPU: the transformed tiles a Winograd convolution holds
               while it runs, at most WINOGRAD_SCRATCH_BYTES
  saved        what autograd keeps from the forward. On the CPU, as an op-by-op
               trace of live memory shows (benchmarks/trace_memory.py; see
               _cpu_activations): each ReLU's output (written in place into its
               conv's output), the inputs of the convs PyTorch runs, a max pool's
               int64 indices where its ReLU does not run with it, an L2 pool's
               output and squares. On CUDA, as first derived and checked against
               the H100's peaks (_cuda_activations): each conv's output, each
               pool's output and indices. Both: the normalised input image and the
               content loss's (F - P) residual; the style loss keeps only the
               features (already counted) and a C x C residual (below); but the
               reference style loss (no fused kernel for the device) under bf16
               keeps an fp32 copy of each style layer's features
  backward     transient gradient buffers. CPU: what the backward holds beyond
               the saved tensors at its peak (for VGG-19 at its start, two
               gradients of the deepest layers). CUDA: BACKWARD_BUFFERS times the
               largest activation
  targets      content targets (fp32, layer size), style Gram targets and the
               style losses' residuals (C x C fp32 each, per layer and batch item)
  guided       with style masks (spatial control) on the Gram loss: the masked
               features F * T_r the style loss keeps, per mask and style layer
  style_loss   W2: a dozen C x C float64 matrices per style layer (moments,
               covariances, eigenvectors; per style with masks). MRF: per
               style layer, each style's patches and their normalised copy
               (the style image taken to have the output's aspect), and,
               where it exceeds the backward's buffers, what one layer's loss
               holds while it runs: the output's patches, their nearest style
               patches, a residual per style and a block of similarities
  image        x, its gradient, the best-image copy, the content image and
               IMAGE_COPIES - 4 transients of the same size (torch.where)
  optimiser    L-BFGS: the S and Y history (history x image, fp32 each), x_a,
               g_a, d, and what grows with the square of the history: W W^T
               (2 history x 2 history, float64) and a step's history x history
               matrices (nst_fast.optimize.optim.lbfgs_bytes); Adam: m and v
  runtime      a constant for what the framework itself allocates on first use
               (CPU: oneDNN primitives and code pages; CUDA: cuBLAS/cuDNN
               workspaces), measured, not derived
  allocator    CPU only: glibc malloc serves tensors under its dynamic mmap
               threshold (up to 32 MiB) from heaps that keep freed chunks, so
               the resident peak exceeds the live tensors. Measured on the
               2-core CPU box at 256-1024 px as 1-20% of saved + backward,
               and varying from run to run; we add ALLOCATOR_SLACK of it.
               (With MALLOC_MMAP_THRESHOLD_ fixed, the other terms alone come
               within -4% to +10% of the measured peak at 768x576: fp32, bf16,
               L2 pooling, low_memory.) While a CPU run keeps freed memory
               (nst_fast/runtime/heap.py: where blocks exceed 32 MiB), larger blocks
               come from the heap too and fragment it: at 768x576, 0.65-1.33
               of saved + backward over the Gram, W2 and MRF losses, masked
               or not, and 1.2-1.25 in bf16 (three runs each), so
               KEPT_ALLOCATOR_SLACK then. CUDA's max_memory_allocated counts
               tensors only, so no slack there.

Activations are in the compute dtype: 4 bytes for fp32 and tf32, 2 for bf16.
The targets, losses, image and optimiser state are always fp32.
"""
import os

import torch

from ..losses import mrf
from ..nets import vgg
from ..ops import backend, relu_pool as pooling_module, winograd
from ..runtime import heap
from . import optim

BACKWARD_BUFFERS = 2
IMAGE_COPIES = 5  # x, grad, best, content image, one transient
RUNTIME_BYTES = {"cpu": 32 << 20, "cuda": 64 << 20}
WINOGRAD_SCRATCH_BYTES = 64 << 20  # kMaxOnePassBytes in csrc/cpu/winograd_cpu.cpp
ALLOCATOR_SLACK = {"cpu": 0.10, "cuda": 0.0}
KEPT_ALLOCATOR_SLACK = 1.0
_POOL_INDEX_BYTES = 8  # max_pool2d_with_indices keeps int64 indices for the backward
PRECISIONS = ("fp32", "tf32", "bf16")
OPTIMIZERS = ("lbfgs", "adam")
STYLE_LOSSES = ("gram", "w2", "mrf")


def _layers(layers, network="vgg19") -> list:
    """Layer names from a list, a dict or a comma-separated string."""
    if isinstance(layers, str):
        layers = [n.strip() for n in layers.split(",") if n.strip()]
    names = list(layers.keys()) if isinstance(layers, dict) else list(layers)
    if not names:
        raise ValueError("no layers given")
    vgg.check_layer_names(names, network=network)
    return names


def _check_choices(height, width, optimizer, precision, style_loss):
    """Raise ValueError for a size, optimizer, precision or style loss a run cannot have."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if style_loss not in STYLE_LOSSES:
        raise ValueError(f"unknown style loss {style_loss!r}; choose one of {', '.join(STYLE_LOSSES)}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (height, width)):
        raise ValueError(f"height and width must be positive whole numbers of pixels, got {height!r}, {width!r}")


def _value_bytes(precision) -> int:
    """Bytes of one activation in the compute dtype."""
    return 2 if precision == "bf16" else 4


def _compute_dtype(precision) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def estimate_parts(height, width, content_layers, style_layers, optimizer="lbfgs", precision="fp32",
                   history=10, batch_styles=1, device="cpu", pooling="max", fused_style=None,
                   network="vgg19", style_regions=0, style_loss="gram", styles=1, style_scale=1.0,
                   mrf_variants=1, winograd_transforms=True) -> dict:
    """The terms of `estimate_bytes`, in bytes, by name (see the module docstring).

    fused_style: whether the style loss runs the extension's kernel (None: as
    nst_fast.ops.backend would choose for the device now). style_regions: masked
    styles (spatial control), each keeping masked features per style layer.
    style_loss: gram, w2 or mrf; styles: the number of style images and
    style_scale their long side relative to the output's (mrf keeps each one's
    patches, from mrf_variants rotated and scaled copies of each).
    winograd_transforms: False for a low_memory run, whose convolutions keep no
    Winograd weight transforms (True: they do where the device runs them).
    """
    _check_choices(height, width, optimizer, precision, style_loss)
    content_layers, style_layers = _layers(content_layers, network), _layers(style_layers, network)
    requested = set(content_layers) | set(style_layers)
    depth = max(vgg.layer_index(n, network) for n in requested) + 1
    act = _value_bytes(precision)
    batch = int(batch_styles)
    dev_type = torch.device(device).type
    by_winograd = _winograd_convs(device, _compute_dtype(precision), winograd_transforms)

    weight_bytes, transforms = _weight_bytes(height, width, depth, precision, by_winograd, network)
    saved, backward = _activations(height, width, depth, requested, precision, pooling, by_winograd, dev_type,
                                   network)
    pixels = 3 * height * width
    content_sizes = _layer_sizes(content_layers, height, width, network)
    style_sizes = _layer_sizes(style_layers, height, width, network)
    saved += _saved_beside_activations(pixels, precision, content_sizes, style_sizes,
                                       _runs_fused_style(fused_style, device))
    # F * T_r per masked style and layer, kept by the style loss; left out of the
    # allocator slack below, which measured no larger with them (768x576, 2 masks).
    guided = style_regions * sum(style_sizes) * act if style_loss == "gram" else 0

    n = batch * pixels
    saved, backward, guided = batch * saved, batch * backward, batch * guided
    style_kept, style_in_flight = _style_loss_bytes(style_loss, style_layers, height, width, styles,
                                                    style_regions, style_scale, mrf_variants, network)
    return {
        "weights": weight_bytes,
        "saved": saved,
        "backward": backward,
        "targets": _target_bytes(content_sizes, style_layers, style_regions, batch, network),
        "image": IMAGE_COPIES * n * 4,
        "optimizer": _optimizer_bytes(optimizer, n, history, device),
        "scratch": WINOGRAD_SCRATCH_BYTES if transforms else 0,
        "runtime": RUNTIME_BYTES.get(dev_type, RUNTIME_BYTES["cuda"]),
        "allocator": _allocator_bytes(saved + backward, dev_type, height, width, precision, network),
        "guided": guided,
        # The MRF's patches are in flight in the forward, the gradient buffers in the
        # backward: the peak holds the larger of the two.
        "style_loss": batch * style_kept + max(0, batch * style_in_flight - backward),
    }


def _winograd_convs(device, compute, winograd_transforms):
    """-> by_winograd(layer, c_in, c_out): whether that conv runs by Winograd on
    `device` in the compute dtype, keeping its weight transforms."""
    transformed = winograd_transforms and winograd.uses_winograd(device, compute)

    def by_winograd(layer, c_in, c_out):
        return transformed and vgg.winograd_fits(layer, c_in) and (
            compute == torch.float32 or winograd.bf16_fits(c_in, c_out))

    return by_winograd


def _weight_bytes(height, width, depth, precision, by_winograd, network):
    """-> (bytes of the convs' weights and biases with their copies and Winograd
    transforms, bytes of the transforms alone)."""
    weights = transforms = 0
    for layer, c_in, c_out, *_ in vgg.walk(height, width, depth, network):
        if layer.kind == "conv":
            weights += c_in * c_out * layer.kernel ** 2 + c_out
            if by_winograd(layer, c_in, c_out):
                transforms += winograd.transform_bytes(c_in, c_out, _value_bytes(precision))
    weight_bytes = weights * 4 + transforms
    if precision == "bf16":
        weight_bytes += weights * 2  # autocast's bf16 copies of the weights
    return weight_bytes, transforms


def _activations(height, width, depth, requested, precision, pooling, by_winograd, dev_type, network):
    """-> (saved, backward) bytes of the network's activations on a device of this type."""
    act = _value_bytes(precision)
    if dev_type == "cuda":
        return _cuda_activations(height, width, depth, requested, act, pooling, network)
    fused_pool = pooling == "max" and _compute_dtype(precision) == torch.float32 and _fused_pool_cpu()
    return _cpu_activations(height, width, depth, requested, act, pooling, fused_pool, by_winograd, network)


def _layer_sizes(names, height, width, network) -> list:
    """The number of values in each named layer's output at height x width."""
    return [c * h * w for c, h, w in (vgg.layer_shape(n, height, width, network) for n in names)]


def _runs_fused_style(fused_style, device) -> bool:
    """fused_style, or where None, whether the device's style loss runs the extension's kernel."""
    if fused_style is not None:
        return fused_style
    try:
        return backend.runs_extension("style_loss_forward", device)
    except RuntimeError:
        return False


def _saved_beside_activations(pixels, precision, content_sizes, style_sizes, fused_style) -> int:
    """Bytes autograd keeps besides the network's activations: the normalised input
    (conv1_1's input), the content loss's (F - P) residual, and under bf16 conv1_1's
    bf16 input and, for the reference style loss, an fp32 copy of the style features."""
    saved = pixels * 4
    if precision == "bf16":
        saved += pixels * 2
    saved += sum(content_sizes) * 4  # (F - P) kept by square()
    if precision == "bf16" and not fused_style:
        saved += sum(style_sizes) * 4
    return saved


def _target_bytes(content_sizes, style_layers, style_regions, batch, network) -> int:
    """The content targets (fp32, layer size), and per batch item the Gram targets and
    the style losses' residuals (C x C fp32 each, per style layer and mask)."""
    grams = sum(vgg.layer_channels(n, network) ** 2 for n in style_layers) * 4 * max(1, style_regions)
    return sum(content_sizes) * 4 + 2 * batch * grams


def _optimizer_bytes(optimizer, values, history, device) -> int:
    """The optimiser's state for `values` image values: L-BFGS's history or Adam's m and v."""
    if optimizer == "lbfgs":
        return optim.lbfgs_bytes(values, history, device)
    return 2 * values * 4


def _cpu_activations(height, width, depth, requested, act, pooling, fused_pool, by_winograd, network):
    """-> (saved, backward) bytes of the network's activations on the CPU, where
    an op-by-op trace of live memory (benchmarks/trace_memory.py) shows what autograd
    keeps: each ReLU's output, written into its conv's output; the input of a conv
    that PyTorch runs (a Winograd conv of fixed weights keeps none), which is new
    where it is a pool's output; a max pool's int64 indices unless the ReLU before it
    runs with it (pooling.py); an L2 pool's output and the squares of its input.
    backward: what the backward holds beyond that at its peak, taken over the layers
    from the deepest, each with the saved tensors of the layers before it and two
    gradient buffers of its size: for VGG-19 the peak is at its start."""
    names = vgg.layer_names(network)
    kept, live_at, after = 0, [], None  # after: the kind of the layer before
    for i, (layer, c_in, c_out, h, w, oh, ow) in enumerate(vgg.walk(height, width, depth, network)):
        out = c_out * oh * ow
        if layer.kind == "conv":
            kept += out * act
            if after == "pool" and not by_winograd(layer, c_in, c_out):
                kept += c_in * h * w * act
            if names[i] in requested and i + 1 < depth:
                kept += out * act  # the ReLU after a requested conv is not in place: a second buffer
        elif layer.kind == "pool":
            # A requested ReLU before the pool may run with its style loss instead (ops.py).
            alone = names[i - 1] in requested or not (layer.kernel == 2 and layer.stride == 2)
            if pooling == "max" and (alone or not fused_pool):
                kept += out * _POOL_INDEX_BYTES
            elif pooling == "l2":
                kept += out * act + c_in * h * w * act  # the squares, kept by avg_pool2d's backward
        live_at.append(kept + BACKWARD_BUFFERS * max(out, c_in * h * w) * act)
        after = layer.kind
    return kept, max(live_at) - kept


def _cuda_activations(height, width, depth, requested, act, pooling, network):
    """-> (saved, backward) on CUDA: each conv's output, each pool's output and
    int64 indices, and BACKWARD_BUFFERS of the largest activation for the backward. The
    CPU's trace (above) keeps less than this; on CUDA the difference has not been
    traced, and these terms are the ones the H100's measured peaks were checked
    against (benchmarks/RESULTS.md: -8% at 4096x2720 in bf16, and
    tests/test_memory.py's CUDA case)."""
    names = vgg.layer_names(network)
    saved = largest = 0
    for i, (layer, c_in, c_out, h, w, oh, ow) in enumerate(vgg.walk(height, width, depth, network)):
        out = c_out * oh * ow
        largest = max(largest, out)
        if layer.kind == "conv":
            saved += out * act
            if names[i] in requested and i + 1 < depth:
                saved += out * act
        elif layer.kind == "pool":
            saved += out * (act + (_POOL_INDEX_BYTES if pooling == "max" else 0))
            if pooling == "l2":
                saved += c_in * h * w * act
    return saved, BACKWARD_BUFFERS * largest * act


def _fused_pool_cpu() -> bool:
    """Whether a CPU run's ReLU and max pool run as one op, keeping no indices (pooling.fits)."""
    try:
        return backend.runs_extension("relu_max_pool2_backward", "cpu") and pooling_module.FUSE
    except RuntimeError:
        return False


def _patch_bytes(name, height, width, network) -> int:
    """Bytes of the MRF's float32 patches of layer `name` for a height x width image."""
    c, h, w = vgg.layer_shape(name, height, width, network)
    side = mrf.PATCH
    return max(0, (h - side) // mrf.STRIDE + 1) * max(0, (w - side) // mrf.STRIDE + 1) * c * side * side * 4


def _style_loss_bytes(style_loss, style_layers, height, width, styles, style_regions, style_scale,
                      mrf_variants, network):
    """-> (bytes kept for the whole step, bytes in flight while the loss runs)."""
    if style_loss == "w2":
        losses = style_regions or 1  # unmasked styles blend into one target
        return losses * sum(12 * vgg.layer_channels(n, network) ** 2 * 8 for n in style_layers), 0
    if style_loss != "mrf":
        return 0, 0
    kept = in_flight = 0
    style_h, style_w = max(1, round(height * style_scale)), max(1, round(width * style_scale))
    for name in style_layers:
        values = _patch_bytes(name, height, width, network)
        kept += 2 * styles * mrf_variants * _patch_bytes(name, style_h, style_w, network)
        in_flight = max(in_flight, (styles + 2) * values + mrf.SEARCH_CHUNK_BYTES)
    return kept, in_flight


def _allocator_bytes(live_bytes, dev_type, height, width, precision, network) -> int:
    """The allocator's slack over `live_bytes` (saved + backward) of tensors."""
    # The same test of block size as StyleTransfer makes before it keeps memory.
    largest = largest_activation_bytes(height, width, precision, network)
    return int(_allocator_slack(dev_type, largest) * live_bytes)


def _allocator_slack(dev_type: str, largest_bytes: int) -> float:
    if dev_type == "cpu" and heap.worth_keeping(largest_bytes):
        return KEPT_ALLOCATOR_SLACK
    return ALLOCATOR_SLACK.get(dev_type, 0.0)


def largest_activation_bytes(height: int, width: int, precision: str = "fp32", network: str = "vgg19") -> int:
    """The largest activation of a step (VGG: conv1_x's 64 channels at full size)."""
    largest = max(c * h * w for _, _, c, _, _, h, w in vgg.walk(height, width, network=network))
    return largest * _value_bytes(precision)


def estimate_bytes(height, width, content_layers, style_layers, optimizer="lbfgs", precision="fp32",
                   history=10, batch_styles=1, device="cpu", pooling="max", fused_style=None,
                   network="vgg19", style_regions=0, style_loss="gram", styles=1, style_scale=1.0,
                   mrf_variants=1, winograd_transforms=True) -> int:
    """Estimated peak memory (bytes) of one optimisation step at height x width.

    content_layers / style_layers: names or {name: weight} dicts (the weights are ignored).
    batch_styles: images optimised together in one batch; everything but the
    network's weights and the content targets scales with it.
    """
    return int(sum(estimate_parts(height, width, content_layers, style_layers, optimizer, precision,
                                  history, batch_styles, device, pooling, fused_style, network,
                                  style_regions, style_loss, styles, style_scale, mrf_variants,
                                  winograd_transforms).values()))


def style_pass_bytes(long_side, aspect, layers, precision="fp32", device="cpu", network="vgg19",
                     winograd_transforms=True) -> int:
    """Peak memory (bytes) of taking the targets of a style image of this long side
    and aspect (width / height): a forward without autograd, which holds the weights,
    a layer's input and output (the largest activation twice) and the requested
    layers' features until their Gram matrices are made. It grows with the style
    image's size, not the output's."""
    height, width = _shape(long_side, aspect)
    names = _layers(layers, network)
    act = _value_bytes(precision)
    depth = max(vgg.layer_index(n, network) for n in names) + 1
    largest = max(c_out * oh * ow for _, _, c_out, _, _, oh, ow in vgg.walk(height, width, depth, network))
    kept = sum(c * h * w for c, h, w in (vgg.layer_shape(n, height, width, network) for n in names))
    parts = estimate_parts(height, width, names, names[:1], precision=precision, device=device, network=network,
                           winograd_transforms=winograd_transforms)
    return int(parts["weights"] + parts["scratch"] + parts["runtime"] + (2 * largest + kept) * act)


def _shape(long_side: int, aspect: float):
    """(height, width) with the given long side; aspect is width / height."""
    if aspect >= 1:
        return max(1, round(long_side / aspect)), long_side
    return long_side, max(1, round(long_side * aspect))


def largest_size(budget_bytes, aspect, content_layers, style_layers, optimizer="lbfgs", precision="fp32",
                 history=10, batch_styles=1, device="cpu", pooling="max", fused_style=None,
                 network="vgg19", style_regions=0, style_loss="gram", styles=1, style_scale=1.0,
                 mrf_variants=1, winograd_transforms=True) -> int:
    """The largest long side (pixels) whose estimate fits in budget_bytes; 0 if none does.

    aspect is width / height of the content image.
    """
    if not aspect > 0:
        raise ValueError(f"aspect must be positive, got {aspect!r}")
    requested = _layers(content_layers, network) + _layers(style_layers, network)
    smallest = vgg.min_side(requested, network)

    def fits(side):
        h, w = _shape(side, aspect)
        if min(h, w) < smallest:
            return True  # too small to run at all; not a memory question
        return estimate_bytes(h, w, content_layers, style_layers, optimizer, precision, history,
                              batch_styles, device, pooling, fused_style, network, style_regions, style_loss,
                              styles, style_scale, mrf_variants, winograd_transforms) <= budget_bytes

    lo, hi = 0, 1
    while fits(hi):  # the estimate grows with the side: find a side that does not fit
        lo, hi = hi, hi * 2
        if hi > 1 << 20:  # no size is too large: at this aspect none can run at all, or any can
            h, w = _shape(lo, aspect)
            return lo if min(h, w) >= smallest else 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    h, w = _shape(lo, aspect) if lo else (0, 0)
    return lo if lo and min(h, w) >= smallest else 0


def largest_history(budget_bytes, height, width, content_layers, style_layers, history=10, **options) -> int:
    """The longest L-BFGS history shorter than `history` whose estimate at height x width
    fits in budget_bytes; 0 if none does, or the optimiser is not L-BFGS. options: the
    other arguments of estimate_bytes."""
    if options.get("optimizer", "lbfgs") != "lbfgs":
        return 0

    def fits(length):
        return estimate_bytes(height, width, content_layers, style_layers, history=length,
                              **options) <= budget_bytes

    if history <= 1 or not fits(1):
        return 0
    lo, hi = 1, history
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _meminfo_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes(device="cpu") -> int:
    """Free memory for a run on `device`: free GPU memory, or available RAM on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    found = _meminfo_available()
    if found is not None:
        return found
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
