"""Live memory after every op of a real run, against nst_fast.optimize.memory's estimate: where a
step's peak is and what is alive there.

    python benchmarks/trace_memory.py [--size 768] [--device cpu|cuda] [--precision fp32]
                                      [--low-memory] [--steps 3] [--ops 20]

Live memory is what the allocator has handed out and not taken back: on the CPU
glibc's count (mallinfo2: heap chunks in use plus mmapped blocks), on CUDA
torch.cuda.memory_allocated. It is read after each op (a TorchDispatchMode), so what
an op allocates and frees inside itself (the Winograd scratch, cuDNN's workspaces) is
not seen; the estimate counts those as "scratch" and "runtime". The baseline is taken
after the weights are loaded, as the estimate's own. Random weights, random images,
the style image at half the output's size; Linux with glibc for the CPU.
"""
import argparse
import ctypes

import common  # noqa: F401  (the repository root on sys.path)
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nst_fast
from nst_fast.optimize import memory
from nst_fast.optimize.options import default_layers

MiB = 1 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def live_bytes(device: str):
    """A function returning the bytes now allocated on `device`."""
    if device == "cuda":
        return torch.cuda.memory_allocated
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2

    def cpu():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return cpu


class OpTrace(TorchDispatchMode):
    """(op name, live bytes after it) for every op run under it."""

    def __init__(self, live):
        super().__init__()
        self.live, self.ops = live, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append((str(func), self.live()))
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768, help="long side; the image is 4:3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=memory.PRECISIONS)
    parser.add_argument("--low-memory", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ops", type=int, default=20, help="ops to list before and after the peak")
    args = parser.parse_args()
    w, h = args.size, args.size * 3 // 4
    transfer = nst_fast.StyleTransfer(weights="random", device=args.device)
    gen = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, h, w, generator=gen), torch.rand(1, 3, h // 2, w // 2, generator=gen)
    live = live_bytes(args.device)
    base = live()
    trace = OpTrace(live)
    with trace:
        transfer.stylize_tensor(content, style, size=w, steps=args.steps, style_scale=0.5, precision=args.precision,
                                low_memory=args.low_memory, cuda_graph=False)
    peak_at = max(range(len(trace.ops)), key=lambda i: trace.ops[i][1])
    for name, now in trace.ops[max(0, peak_at - args.ops): peak_at + args.ops]:
        print(f"{(now - base) / MiB:9.1f} MiB  {name}")
    content_layers, style_layers = default_layers("vgg19", "gram")
    parts = memory.estimate_parts(h, w, content_layers, style_layers, precision=args.precision, device=args.device,
                                  style_scale=0.5, winograd_transforms=not args.low_memory)
    seen = sum(v for k, v in parts.items() if k not in ("allocator", "scratch", "runtime"))
    print(f"\n{w}x{h} {args.device} {args.precision}{' low_memory' if args.low_memory else ''}: peak "
          f"{(trace.ops[peak_at][1] - base) / MiB:.0f} MiB live after op {peak_at} of {len(trace.ops)} "
          f"({trace.ops[peak_at][0]}); the estimate's parts that ops leave allocated: {seen / MiB:.0f} MiB")
    print(", ".join(f"{k} {v / MiB:.0f}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
