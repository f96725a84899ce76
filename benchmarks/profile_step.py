"""Where the time of one optimisation step goes: the top kernels of a few steps.

    python benchmarks/profile_step.py [--device cuda] [--size 512] [--precision tf32]
"""
import argparse
import os

import common
import torch
from torch.profiler import ProfilerActivity, profile

from nst_fast import StyleTransfer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args(argv)
    transfer = StyleTransfer(weights=os.environ.get("NST_FAST_WEIGHTS", "random"), device=args.device)
    content, style = common.example_paths()
    run = dict(size=args.size, precision=args.precision, style_weight=5e7, report_every=10**9,
               cuda_graph=False)  # eager, so the profiler sees every kernel
    transfer.stylize_tensor(content, style, steps=3, **run)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        transfer.stylize_tensor(content, style, steps=args.steps, **run)
    key = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(f"{args.steps} steps (plus set-up) at {args.size} px, {args.precision}, {args.device}")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
