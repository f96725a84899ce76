"""A step's backward with the content loss's gradient in the features' layout (nst_fast)
against mse_loss's own backward (contiguous), alternating in one process.

    python benchmarks/bench_content_loss.py [--sizes 256,512] [--pairs 30]

VGG-19 with random weights, Gatys' layers (content relu4_2), channels-last activations.
"""
import argparse
import os
import statistics
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nst_fast import losses, vgg  # noqa: E402

STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def mse_loss_backward(features, target):
    return 0.5 * F.mse_loss(features.float(), target, reduction="sum")


def backward_ms(loss, image, content_loss):
    losses.content_loss = content_loss
    total, _ = loss.terms(image)
    start = time.perf_counter()
    torch.autograd.grad(total, image)
    return (time.perf_counter() - start) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--pairs", type=int, default=30)
    args = p.parse_args(argv)
    arms = {"mse_loss's backward": mse_loss_backward, "features' layout": losses.content_loss}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| size | mse_loss's backward ms | features' layout ms | speed-up | ranges |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        h, w = size * 2 // 3, size
        net = vgg.VGGFeatures(STYLE + ["relu4_2"], vgg.random_state(0))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            feats = net(torch.rand(1, 3, h, w, generator=gen))
        loss = losses.GatysLoss(net, {"relu4_2": feats["relu4_2"].float().clone()},
                                {n: losses.gram_target(feats[n], 1.0) for n in STYLE}, {"relu4_2": 1.0},
                                {n: 0.2 for n in STYLE}, alpha=1.0, beta=1e3, tv_weight=0.0)
        image = torch.rand(1, 3, h, w, generator=gen).requires_grad_()
        times = {name: [] for name in arms}
        for _ in range(3):  # warm-up: weight transforms, the allocator
            for fn in arms.values():
                backward_ms(loss, image, fn)
        for i in range(args.pairs):
            for name in (list(arms) if i % 2 == 0 else list(arms)[::-1]):
                times[name].append(backward_ms(loss, image, arms[name]))
        old, new = (statistics.median(times[name]) for name in arms)
        ranges = ", ".join(f"{min(t):.1f}-{max(t):.1f}" for t in times.values())
        print(f"| {w}x{h} | {old:.2f} | {new:.2f} | {old / new:.3f}x | {ranges} |", flush=True)
    losses.content_loss = arms["features' layout"]


if __name__ == "__main__":
    main()
