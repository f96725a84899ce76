"""How often the CUDA backward's bf16 gradient is not the correctly rounded one, per
kernel route, measured on the CPU emulator of the kernels (tests/cuda_emulator).

    python benchmarks/experiments/emulated_rounding.py [--c 128] [--m 1024]

An fp32-accurate kernel rounds each gradient element once, so nearly every element
equals the float64 gradient rounded to bf16. Routes: the cp.async path (the residual D
as three exact bf16 parts, m16n8k16), the same without the D-resident backward, and
the register-staged path (misaligned features: D split into two tf32 parts).
Needs g++ and the CUDA headers (CUDA_HOME), as the emulated tests do.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import test_cuda_emulated as emulated  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--c", type=int, default=128)
    p.add_argument("--m", type=int, default=1024)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp())
    try:
        harness = emulated._build(work, ["-O2"])
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        print(f"emulated_rounding: {exc.msg}", file=sys.stderr)
        return 1
    f = emulated.features(1, args.c, args.m, seed=4).to(torch.bfloat16)
    misaligned = torch.cat([torch.zeros(1, dtype=f.dtype), f.flatten()])[1:].view(f.shape)
    scale = 1.0 / (args.c * args.m)
    target = emulated.symmetric_target(1, args.c)
    print(f"bf16 features (1, {args.c}, {args.m}): elements of dF that differ from the float64 gradient "
          "rounded to bf16\n")
    print("| route | layout | differ | of | norm-wise error |")
    print("|---|---|---|---|---|")
    routes = (("cp.async, D-resident", f, True, ("1", "1")), ("cp.async", f, False, ("1", "0")),
              ("register-staged (tf32)", misaligned, True, ("0", "0")))
    for route, feats, resident, expected in routes:
        channels_last = feats.transpose(1, 2).contiguous().transpose(1, 2)
        for layout, x in (("standard", feats), ("channels-last", channels_last)):
            if route.startswith("register") and layout == "channels-last":
                continue
            run = emulated.Run(harness, work, "bf16", resident=resident)
            _, residual = run.forward(x, target, scale)
            grad = run.backward(0.75, residual, x, scale)
            ref = 4 * scale * 0.75 * (residual.double() @ x.double())
            assert (run.variant["async"], run.variant["resident"]) == expected, run.variant
            differ = int((grad != ref.to(torch.bfloat16)).sum())
            print(f"| {route} | {layout} | {differ} | {grad.numel()} | "
                  f"{emulated.rel(grad, ref):.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
