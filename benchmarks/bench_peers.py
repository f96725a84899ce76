"""nst_fast against peer implementations of Gatys' method: time per step and peak memory.

    python benchmarks/bench_peers.py [--device cpu|cuda] [--sizes 256,512] [--md out.md]

Each tool runs the same objective (content relu4_2, style relu1_1 .. relu5_1, the
example images, the same VGG-19 weights, L-BFGS) in a fresh process of its own, so
each one's peak memory is its own: peak resident set on the CPU, peak allocated
memory on a GPU. A step's time is (T(n2 steps) - T(n1 steps)) / (n2 - n1), as in
bench_step.py.

nst_fast-low-memory is nst_fast with low_memory=True (on the CPU: no Winograd weight
transforms). The peers:
- tutorial: the PyTorch neural-transfer tutorial's loop (benchmarks/naive.py);
- pystiche: pystiche's own Gatys pipeline (`loss.PerceptualLoss` of a
  `FeatureReconstructionLoss` and `GramLoss`es, `optim.image_optimization`),
  where pystiche is importable (`pip install pystiche`). pystiche 1.0.1 imports
  `model_urls` from torchvision, which torchvision 0.15 removed; the worker puts an
  empty one back before importing it.
"""
import argparse
import json
import os
import subprocess
import sys

import common
import torch
from common import STYLE_WEIGHT, inputs, peak_resident_mib, per_step_ms, resident_mib

from nst_fast import StyleTransfer
from nst_fast.optimize.options import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, default_precision

TOOLS = ("nst_fast", "nst_fast-low-memory", "tutorial", "pystiche")


def import_pystiche():
    """pystiche, with the `model_urls` tables torchvision 0.15 removed put back for its import,
    filled from torchvision's weight enums as torchvision 0.14 had them."""
    import torchvision.models as models
    tables = {"alexnet": {"alexnet": models.AlexNet_Weights.IMAGENET1K_V1.url},
              "vgg": {arch: getattr(models, f"{arch.upper()}_Weights").IMAGENET1K_V1.url
                      for arch in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn",
                                   "vgg19_bn")}}
    for name, table in tables.items():
        module = sys.modules[f"torchvision.models.{name}"]
        if not hasattr(module, "model_urls"):
            module.model_urls = table
    import pystiche
    from pystiche import enc, loss, optim
    return pystiche, enc, loss, optim


def pystiche_runner(state, content, style, device):
    pystiche, enc, loss, optim = import_pystiche()
    encoder = enc.vgg19_multi_layer_encoder(pretrained=False)
    convs = [m for m in encoder.children() if isinstance(m, torch.nn.Conv2d)]
    ours = [k for k in state if k.endswith(".weight")]
    for conv, key in zip(convs, ours):  # the same weights as the other tools, layer by layer
        conv.weight.data.copy_(state[key])
        conv.bias.data.copy_(state[key[: -len("weight")] + "bias"])
    content_loss = loss.FeatureReconstructionLoss(encoder.extract_encoder(next(iter(DEFAULT_CONTENT_LAYERS))))
    style_loss = loss.MultiLayerEncodingLoss(
        encoder, list(DEFAULT_STYLE_LAYERS), lambda e, w: loss.GramLoss(e, score_weight=w),
        score_weight=STYLE_WEIGHT)
    criterion = loss.PerceptualLoss(content_loss, style_loss).to(device)
    criterion.set_content_image(content)
    criterion.set_style_image(style)

    def run(n):
        optim.image_optimization(content.clone(), criterion, num_steps=n, quiet=True)
    return run, f"pystiche {pystiche.__version__}"


def runner(tool, device, size):
    """-> (run(n_steps), label), for one tool at one size."""
    content, style = (t.to(device) for t in inputs(size))
    transfer = StyleTransfer(weights=os.environ.get("NST_FAST_WEIGHTS", "random"), device=device)
    if tool.startswith("nst_fast"):
        precision, low_memory = default_precision([device]), tool.endswith("low-memory")

        def run(n):
            transfer.stylize_tensor(content, style, size=size, steps=n, style_weight=STYLE_WEIGHT,
                                    report_every=10**9, low_memory=low_memory)
        return run, f"nst_fast ({precision}{', low_memory' if low_memory else ''})"
    if tool == "tutorial":
        import naive

        def run(n):
            naive.run(transfer.state, content, style, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS,
                      1.0, STYLE_WEIGHT, n, device)
        return run, "PyTorch tutorial"
    return pystiche_runner(transfer.state, content, style, device)


def worker(tool, device, size, n1, n2, repeats):
    """Runs in a process of its own; prints one JSON line."""
    device = torch.device(device)
    try:
        run, label = runner(tool, device, size)
    except ImportError as e:
        print(json.dumps({"tool": tool, "skipped": f"not importable: {e}"}))
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = resident_mib()
    ms = per_step_ms(run, device, n1, n2, repeats)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_resident_mib() - before)
    h, w = inputs(size)[0].shape[-2:]
    print(json.dumps({"tool": tool, "label": label, "size": f"{w}x{h}", "ms": ms, "peak_mib": peak}))


def measure(tool, args, size):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, "--device", args.device,
           "--sizes", str(size), "--steps", args.steps, "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"tool": tool, "skipped": f"failed: {tail}"}
    return json.loads(lines[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="256,512", help="long sides in pixels")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--steps", default="3,8", help="n1,n2 step counts for the difference")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--md", default=None, help="also write the table to this markdown file")
    p.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    n1, n2 = (int(s) for s in args.steps.split(","))
    if args.worker:
        worker(args.worker, args.device, int(args.sizes), n1, n2, args.repeats)
        return
    what = "peak allocated MiB" if args.device.startswith("cuda") else "peak resident MiB over the start"
    report = common.Report(args.md)
    report.add(f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
               f"weights {os.environ.get('NST_FAST_WEIGHTS', 'random')}", "")
    report.table("size", "tool", "ms / step", "nst_fast's speed-up", what, "memory vs nst_fast")
    for size in (int(s) for s in args.sizes.split(",")):
        ours = None
        for tool in args.tools.split(","):
            r = measure(tool, args, size)
            if "skipped" in r:
                report.row(size, tool, r["skipped"], "", "", "")
            else:
                ours = r if tool == "nst_fast" else ours
                speed = f"{r['ms'] / ours['ms']:.2f}x" if ours else "-"
                mem = f"{r['peak_mib'] / ours['peak_mib']:.2f}x" if ours and ours["peak_mib"] > 0 else "-"
                report.row(r["size"], r["label"], f"{r['ms']:.1f}", speed, f"{r['peak_mib']:.0f}", mem)
    report.finish()


if __name__ == "__main__":
    main()
