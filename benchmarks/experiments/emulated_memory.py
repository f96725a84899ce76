"""How the CUDA style-loss kernels' memory accesses would be served on a GPU, measured
on the CPU emulator (tests/cuda_emulator, built with its access profiler).

    python benchmarks/experiments/emulated_memory.py [--sites]

Per kernel run: shared-memory wavefronts against the fewest its accesses need (a ratio
above 1 is bank conflicts), global 32-byte sectors against the fewest (above 1: loads
or stores that are not coalesced), and the bytes of features and residual the blocks
request against the distinct bytes (the re-reads the L2 cache serves). Shapes are the
VGG-19 style layers' channel counts with short M (the per-instruction patterns do not
depend on M). --sites lists every site with conflicts or extra sectors. Counts, not
times: nothing here measures speed. Instructions that only some lanes of a warp run
(matrix edges, a diagonal tile's triangle) are counted as divergent and not costed.
Needs g++, addr2line and the CUDA headers (CUDA_HOME).
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import emulated_profile  # noqa: E402
import test_cuda_emulated as emulated  # noqa: E402

SHAPES = ((64, 2048), (128, 512), (256, 256), (512, 128))


def cases():
    for dtype in ("f32", "bf16"):
        for layout in ("standard", "channels-last"):
            for c, m in SHAPES:
                for op in ("forward", "backward"):
                    yield op, dtype, layout, c, m, True
            yield "backward", dtype, layout, 64, 2048, False  # the D-resident backward turned off


def profile_one(harness, work, op, dtype, layout, c, m, resident):
    path = work / "profile.txt"
    run = emulated.Run(harness, work, dtype, resident=resident, profile=path)
    f = emulated.features(1, c, m).to(emulated.DTYPES[dtype])
    if layout == "channels-last":
        f = f.transpose(1, 2).contiguous().transpose(1, 2)
    scale = 1.0 / (c * m)
    target = emulated.symmetric_target(1, c)
    if op == "forward":
        run.forward(f, target, scale)
    else:
        residual = (f.double() @ f.double().transpose(1, 2) - target).float()
        run.backward(0.75, residual, f, scale)
    return run.variant, emulated_profile.read(path, harness)


def ratio(pair):
    units, ideal = pair
    return f"{units / ideal:.2f}" if ideal else "-"


def reuse(p, region):
    return f"{p.requested[region] / p.distinct[region]:.1f}" if p.distinct.get(region) else "-"


def divergent(p):
    """Share of the memory instructions left uncosted as divergent."""
    n = sum(s.divergent for s in p.sites)
    return f"{n / (n + sum(s.instructions for s in p.sites)):.1%}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", action="store_true", help="list the sites with conflicts or extra sectors")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp())
    include = emulated._cuda_include()
    if include is None:
        print("emulated_memory: needs the CUDA headers (set CUDA_HOME)", file=sys.stderr)
        return 1
    try:
        harness = emulated_profile.build(work, include)
    except RuntimeError as exc:
        print(f"emulated_memory: the profiling emulator did not build: {exc}", file=sys.stderr)
        return 1
    print("| kernel | dtype | layout | C | M | shared wavefronts / ideal | global sectors / ideal | "
          "features read / distinct | residual read / distinct | mma.sync | divergent |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    flagged = []
    for op, dtype, layout, c, m, resident in cases():
        variant, p = profile_one(harness, work, op, dtype, layout, c, m, resident)
        if op == "forward":
            kernel = "forward" if variant["async"] == "1" else "forward (registers)"
        else:
            kernel = "backward, D resident" if variant["resident"] == "1" else "backward"
            kernel += "" if variant["async"] == "1" else " (registers)"
        print(f"| {kernel} | {dtype} | {layout} | {c} | {m} | {ratio(p.total('shared'))} | "
              f"{ratio(p.total('global'))} | {reuse(p, 'features')} | {reuse(p, 'residual')} | {p.mma} | "
              f"{divergent(p)} |")
        flagged += [(kernel, dtype, layout, c, s) for s in p.sites if s.units > s.ideal]
    if args.sites:
        print("\n| kernel | dtype | layout | C | site | access | bytes / lane | instructions | units / ideal | "
              "divergent |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for kernel, dtype, layout, c, s in flagged:
            access = f"{s.space} {'store' if s.write else 'load'}" + ("" if s.space == "shared" else f" ({s.region})")
            print(f"| {kernel} | {dtype} | {layout} | {c} | {s.where} | {access} | {s.bytes} | {s.instructions} | "
                  f"{s.excess:.2f} | {s.divergent} |")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
