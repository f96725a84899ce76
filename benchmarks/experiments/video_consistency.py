"""Flicker between consecutive video frames, per start of each frame: its own content
(independent runs), the previous result as it is, or the previous result carried
over (`--init previous`: nst_fast/app/video.py).

    python benchmarks/experiments/video_consistency.py [--weights PATH] [--size 256] [--steps 60] [--frames 4]

Three synthetic clips from the example photo: a still camera with sensor noise (the
photo plus fresh Gaussian noise, sigma 2/255, per frame), a pan (a window moving
4 px per frame), and a still camera on a moving object (a 40 px square cut from the
photo sliding 4 px per frame). Flicker is the mean absolute difference, in 8-bit
levels, between consecutive outputs aligned by the camera's motion;
the same measure of the frames themselves is printed beside it as the floor. The
final total loss of the last frame shows what the start costs the result. Real
weights are needed for a meaningful answer; by default the partial Caffe VGG-19 in
../shared/weights.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import common  # noqa: E402

from nst_fast import StyleTransfer  # noqa: E402
from nst_fast.imaging import images  # noqa: E402
from nst_fast.app import video  # noqa: E402

SHARED = common.SHARED_WEIGHTS
PAN = 4


def clips(size, frames):
    """{name: (frames, shift in px between consecutive frames)} at `size` px wide."""
    photo = images.to_tensor(common.example_paths()[0])
    still = images.resize_long_side(photo, size)
    gen = torch.Generator().manual_seed(0)
    noisy = [(still + torch.randn(still.shape, generator=gen) * 2 / 255).clamp(0, 1) for _ in range(frames)]
    wide = images.resize_long_side(photo, size + PAN * (frames - 1))  # a landscape photo: width is the long side
    pan = [wide[..., k * PAN: k * PAN + size] for k in range(frames)]
    square = still[..., 20:60, 150:190]
    moving = []
    for k in range(frames):
        frame = still.clone()
        frame[..., 60:100, 20 + k * PAN: 60 + k * PAN] = square
        moving.append(frame)
    return {"still camera, noise": (noisy, 0), f"pan {PAN} px / frame": (pan, PAN),
            f"object moving {PAN} px / frame": (moving, 0)}


def flicker(seq, shift):
    """Mean |frame t - frame t-1| in 8-bit levels, aligned by `shift` px of pan."""
    diffs = []
    for before, after in zip(seq, seq[1:]):
        a = after[..., : after.shape[-1] - shift] if shift else after
        b = before[..., shift:] if shift else before
        diffs.append((a - b).abs().mean() * 255)
    return float(torch.stack(diffs).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=SHARED)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--frames", type=int, default=4)
    args = p.parse_args(argv)
    partial = os.path.abspath(args.weights) == os.path.abspath(SHARED)
    layers = dict(content_layers="relu3_2", style_layers="relu1_1,relu2_1,relu3_1") if partial else {}
    style = images.to_tensor(common.example_paths()[1])
    transfer = StyleTransfer(weights=args.weights, device="cpu")
    print(f"{args.size} px wide, {args.frames} frames, {args.steps} L-BFGS steps each, "
          f"weights {os.path.basename(args.weights)}")
    starts = ("content", "previous as it is", "carried over")
    print("| clip | frames' own change | " + " | ".join(f"{s}: flicker | last loss" for s in starts) + " |")
    print("|---|---|" + "---|---|" * len(starts))
    for name, (frames, shift) in clips(args.size, args.frames).items():
        row = [name, f"{flicker(frames, shift):.2f}"]
        for start in starts:
            outputs = []
            for k, frame in enumerate(frames):
                init = "content"
                if outputs and start == "previous as it is":
                    init = outputs[-1]
                elif outputs and start == "carried over":
                    init = video.carry_over(frames[k - 1], outputs[-1], frame)
                result = transfer.run(frame, style, size=args.size, steps=args.steps, init=init, **layers)
                outputs.append(result.image)
            row += [f"{flicker(outputs, shift):.2f}", f"{result.history[-1]['total']:.4g}"]
        print("| " + " | ".join(row) + " |")

if __name__ == "__main__":
    main()
