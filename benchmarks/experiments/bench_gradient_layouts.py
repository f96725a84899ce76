"""A step's backward with the losses' gradients in the activations' layout (nst_fast)
against the same losses with PyTorch's own backwards, which write them contiguous
(mse_loss for the content, select and mm for W2's moments, fold for MRF's patches),
alternating in one process.

    python benchmarks/experiments/bench_gradient_layouts.py [--size 256] [--pairs 20] [--losses gram,w2,mrf]

VGG-19 with random weights, each style loss's default layers, content relu4_2,
channels-last activations, the example images.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import common  # noqa: E402

from nst_fast import StyleTransfer  # noqa: E402
from nst_fast.imaging import images  # noqa: E402
from nst_fast.losses import gatys as losses  # noqa: E402
from nst_fast.losses import mrf  # noqa: E402
from nst_fast.nets import vgg  # noqa: E402
from nst_fast.losses import wasserstein  # noqa: E402
from nst_fast.ops.reference import accum_dtype  # noqa: E402
from nst_fast.optimize.options import Options  # noqa: E402
from nst_fast.optimize.targets import scale_loss  # noqa: E402


@contextlib.contextmanager
def contiguous_gradients():
    """The losses as they were: PyTorch's backwards, contiguous gradients."""
    saved = losses.content_loss, wasserstein._flat, mrf._GradInLayout.apply
    losses.content_loss = lambda f, t: 0.5 * F.mse_loss(f.float(), t, reduction="sum")
    wasserstein._flat = lambda f: f[0].flatten(1).to(accum_dtype(f.dtype))
    mrf._GradInLayout.apply = lambda x: x
    try:
        yield
    finally:
        losses.content_loss, wasserstein._flat, mrf._GradInLayout.apply = saved


def backward_ms(loss, image, arm):
    with arm():
        total, _ = loss.terms(image)
        start = time.perf_counter()
        torch.autograd.grad(total, image)
        return (time.perf_counter() - start) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--losses", default="gram,w2,mrf")
    args = p.parse_args(argv)
    arms = {"contiguous": contiguous_gradients, "activations' layout": contextlib.nullcontext}
    transfer = StyleTransfer(weights="random", device="cpu")
    content_path, style_path = common.example_paths()
    content = images.resize_long_side(images.to_tensor(content_path), args.size)
    style = images.to_tensor(style_path)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {content.shape[-1]}x{content.shape[-2]}\n")
    print("| style loss | contiguous ms | activations' layout ms | speed-up | ranges |")
    print("|---|---|---|---|---|")
    for style_loss in args.losses.split(","):
        opts = Options(size=args.size, style_loss=style_loss).resolve()
        net = transfer.network(list(opts.content_layers) + list(opts.style_layers))
        min_side = vgg.min_side(net.layers)
        image = content.clone().requires_grad_()
        times = {name: [] for name in arms}
        for name, arm in arms.items():  # each arm's own targets (MRF's patches, W2's moments)
            with arm():
                loss = scale_loss(net, content, [style], opts, tuple(content.shape[-2:]), min_side, None,
                                  transfer.devices)
            for _ in range(2):  # warm-up: weight transforms, the allocator
                backward_ms(loss, image, arm)
            times[name] = (loss, [])
        for i in range(args.pairs):
            for name in (list(arms) if i % 2 == 0 else list(arms)[::-1]):
                loss, kept = times[name]
                kept.append(backward_ms(loss, image, arms[name]))
        old, new = (statistics.median(times[name][1]) for name in arms)
        ranges = ", ".join(f"{min(t):.1f}-{max(t):.1f}" for _, t in times.values())
        print(f"| {style_loss} | {old:.2f} | {new:.2f} | {old / new:.3f}x | {ranges} |", flush=True)


if __name__ == "__main__":
    main()
