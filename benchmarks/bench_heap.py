"""CPU step time and page faults with and without keeping freed memory (nst_fast/runtime/heap.py).

    python benchmarks/bench_heap.py [--sizes 512,768] [--pairs 3]

Each measurement runs in a fresh interpreter, because glibc's heap remembers what a
process did before: once large blocks have come from the heap, later ones reuse it
even with keeping switched off. The variants alternate (kept, fresh, kept, ...),
and per size the table gives the median ms per step, the page faults per step and
fresh / kept.
"""
import argparse
import json
import os
import subprocess
import sys

import common

# ms per step = (T(12 steps) - T(4 steps)) / 8, after a 2-step warm-up.
_ONE_RUN = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
import common
from nst_fast import StyleTransfer

size = int(sys.argv[1])
content, style = common.inputs(size)
transfer = StyleTransfer(weights="random", device="cpu")

def run(steps):
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    transfer.stylize_tensor(content, style, size=size, steps=steps, style_weight=common.STYLE_WEIGHT,
                            report_every=10**9)
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

run(2)
(t1, f1), (t2, f2) = run(4), run(12)
print(json.dumps({"ms": (t2 - t1) / 8 * 1e3, "faults": (f2 - f1) / 8}))
"""


def one_run(size: int, keep: bool) -> dict:
    # "all": kept at every size, also below the blocks' size where runs keep by default.
    env = dict(os.environ, NST_FAST_KEEP_MEMORY="all" if keep else "0")
    proc = subprocess.run([sys.executable, "-c", _ONE_RUN, str(size), common.HERE], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"a {size} px run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="512,768")
    p.add_argument("--pairs", type=int, default=3)
    args = p.parse_args(argv)
    report = common.Report()
    report.table("size", "kept ms", "fresh ms", "fresh / kept", "kept faults/step", "fresh faults/step")
    for size in (int(s) for s in args.sizes.split(",")):
        runs = {True: [], False: []}
        for _ in range(args.pairs):
            for keep in (True, False):
                runs[keep].append(one_run(size, keep))
        kept, fresh = (common.median([r["ms"] for r in runs[k]]) for k in (True, False))
        kept_faults, fresh_faults = (common.median([r["faults"] for r in runs[k]]) for k in (True, False))
        report.row(size, f"{kept:.1f}", f"{fresh:.1f}", f"{fresh / kept:.2f}x", f"{kept_faults:.0f}",
                   f"{fresh_faults:.0f}")
    report.finish()


if __name__ == "__main__":
    main()
