"""The plan of a run before its first step: the size of each scale, and whether the
CPU convolutions keep their Winograd weight transforms, so that the run fits in memory.
A run that cannot fit is refused with the largest size that does (or, with
fit_memory, shrunk to it), with what else would make it fit."""
import dataclasses
from typing import Optional

from ..errors import NstError
from ..losses import mrf
from . import memory
from .devices import where


@dataclasses.dataclass(frozen=True)
class Plan:
    sizes: list  # the long side at each scale
    winograd_transforms: bool  # whether the CPU convolutions keep Winograd's weight transforms
    note: Optional[str] = None  # what was changed to fit, for the user


def plan_sizes(opts, content_hw, n_styles, devices, pooling, network) -> Plan:
    """The Plan of a run of `opts` (resolved) on a content of content_hw = (H, W)."""
    sizes = opts.sizes()
    height, width = _output_hw(content_hw, sizes[-1])
    args = _estimate_args(opts, n_styles, devices[0].type, pooling, network, sizes[-1])
    budget = opts.memory_limit if opts.memory_limit is not None else \
        sum(memory.available_bytes(d) for d in dict.fromkeys(devices))  # split: their free memory together
    need = memory.estimate_bytes(height, width, **args)
    note = None
    if need > budget and args["winograd_transforms"]:
        args, note = _without_transforms_if_larger(args, budget, width / height)
        need = memory.estimate_bytes(height, width, **args)
    if need > budget:
        sizes, note = _shrunk(opts, sizes, args, need, budget, (height, width), where(devices))
    _check_style_pass(opts, sizes[-1], width / height, args, budget, devices)
    return Plan(sizes, args["winograd_transforms"], note)


def _output_hw(content_hw, long_side) -> tuple:
    """The output's (H, W) at long_side, rounded as the resize rounds, so that a sliver
    of an image reaches the too-small check."""
    h, w = content_hw
    return ((long_side, max(1, round(long_side * w / h))) if h >= w
            else (max(1, round(long_side * h / w)), long_side))


def _estimate_args(opts, n_styles, device_type, pooling, network, long_side) -> dict:
    """The arguments of memory.estimate_bytes for this run, but the size."""
    return dict(content_layers=list(opts.content_layers), style_layers=list(opts.style_layers),
                optimizer=opts.optimizer, precision=opts.precision, history=opts.lbfgs_history,
                device=device_type, pooling=pooling, network=network,
                style_regions=len(opts.style_masks or []), style_loss=opts.style_loss, styles=n_styles,
                mrf_variants=len(mrf.VARIANT_ANGLES) * len(mrf.VARIANT_SCALES) if opts.mrf_variants else 1,
                style_scale=opts.style_size / long_side if opts.style_size else opts.style_scale,
                winograd_transforms=not opts.low_memory)


def _without_transforms_if_larger(args, budget, aspect) -> tuple:
    """(args, note): without the transforms where that reaches the larger size. Without
    them the weights take less and the activations more (a PyTorch convolution keeps its
    input): which wins is a matter of the size each reaches, not of two estimates at one."""
    lean = dict(args, winograd_transforms=False)
    if memory.largest_size(budget, aspect, **lean) > memory.largest_size(budget, aspect, **args):
        return lean, ("the run fits in memory only without the Winograd weight transforms: it ran as "
                      "low_memory (--low-memory), with slower steps")
    return args, None


def _shrunk(opts, sizes, args, need, budget, hw, devices) -> tuple:
    """(sizes, note) of a run that does not fit: with fit_memory, sizes up to the largest
    that fits; else an NstError saying what would fit."""
    height, width = hw
    long_side = sizes[-1]
    fits = memory.largest_size(budget, width / height, **args)
    shorter_history = memory.largest_history(budget, height, width, **args)
    shortfall = (f"a {width}x{height} run needs about {need / 2**30:.1f} GiB but {budget / 2**30:.1f} GiB "
                 f"is available on {devices}")
    fewer_pairs = (f"keep fewer L-BFGS curvature pairs: lbfgs_history {shorter_history} fits at size "
                   f"{long_side} (--lbfgs-history {shorter_history})" if shorter_history else None)
    if fits < 16:
        if fewer_pairs:
            pairs = memory.estimate_parts(height, width, **args)["optimizer"]
            raise NstError(f"{shortfall}, {pairs / 2**30:.1f} GiB of it for the L-BFGS history "
                           f"(lbfgs_history {opts.lbfgs_history}), and no smaller size fits; {fewer_pairs}")
        raise NstError(f"not enough memory on {devices} for even a 16-pixel run")
    if not opts.fit_memory:
        raise NstError(f"{shortfall}; the largest size that fits is {fits}: ask for size {fits}, "
                       "or let fit_memory (--fit-memory) pick it" + (f", or {fewer_pairs}" if fewer_pairs else ""))
    switched = not args["winograd_transforms"] and not opts.low_memory
    note = (f"{shortfall}: fit_memory ran it at size {fits}, the largest that fits"
            + (" without the Winograd weight transforms, as low_memory (--low-memory), with slower steps"
               if switched else "")
            + (f"; {fewer_pairs}" if fewer_pairs else ""))
    return [s for s in sizes if s < fits] + [fits], note


def _check_style_pass(opts, long_side, aspect, args, budget, devices) -> None:
    """The style targets are taken before the steps run, at the style images' own size."""
    style_side = opts.style_side(long_side)
    style_need = memory.style_pass_bytes(style_side, aspect, list(opts.style_layers), opts.precision,
                                         devices[0].type, args["network"], args["winograd_transforms"])
    if style_need > budget:
        raise NstError(f"the style images at {style_side} px (style_size / style_scale) need about "
                       f"{style_need / 2**30:.1f} GiB but {budget / 2**30:.1f} GiB is available on "
                       f"{where(devices)}; give a smaller style size")
