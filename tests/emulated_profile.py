"""The memory-access profile of the emulated CUDA kernels (tests/cuda_emulator/access_profile.h).

The harness is compiled with g++'s ThreadSanitizer instrumentation, whose hooks the
emulator defines itself (the TSan runtime is not linked), so every load and store of the
kernels reaches the profiler. A run writes one line per access site; this module maps
the sites to source lines and sums them.
"""
import os
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMULATOR = ROOT / "tests" / "cuda_emulator"


def build(directory, include, source="harness.cpp"):
    """Compiles a profiling harness (tests/cuda_emulator/`source`) into directory;
    returns its path or raises RuntimeError with the compiler's message."""
    for tool in ("g++", "addr2line"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"needs {tool}")
    stem = Path(source).stem
    obj, exe = directory / f"{stem}_profile.o", directory / f"{stem}_profile"
    # -O1 without vectorisation or scalar replacement of aggregates: each load and store
    # keeps the width the source gives it (a float4 stays 16 bytes), as nvcc's do.
    compile_ = ["g++", "-std=c++20", "-O1", "-fno-tree-vectorize", "-fno-tree-sra", "-g", "-fsanitize=thread",
                "-DNST_EMU_PROFILE", "-fno-strict-aliasing", f"-I{include}", f"-I{ROOT / 'csrc' / 'cuda'}",
                f"-I{ROOT / 'csrc' / 'include'}",
                "-c", str(EMULATOR / source), "-o", str(obj)]
    link = ["g++", "-no-pie", str(obj), "-o", str(exe)]  # without -fsanitize: no TSan runtime
    for cmd in (compile_, link):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
    return exe


@dataclass
class Site:
    where: str        # innermost source line in csrc/cuda, e.g. tile_mma.cuh:188
    space: str        # shared | global
    region: str       # smem, or the global buffer: features, residual, out, workspace, target
    write: bool
    bytes: int        # per lane
    instructions: int
    units: int        # wavefronts (shared) or 32-byte sectors (global), of the converged instructions
    ideal: int
    divergent: int    # instructions some lanes of the warp skipped: not costed

    @property
    def excess(self):
        return self.units / self.ideal if self.ideal else 1.0


@dataclass
class Profile:
    sites: list = field(default_factory=list)
    requested: dict = field(default_factory=dict)  # region -> bytes in the sectors warps asked for
    distinct: dict = field(default_factory=dict)   # region -> bytes in the distinct sectors touched
    mma: int = 0

    def total(self, space, write=None, region=None):
        """(units, ideal) summed over the sites of a space."""
        chosen = [s for s in self.sites if s.space == space and (write is None or s.write == write)
                  and (region is None or s.region == region)]
        return sum(s.units for s in chosen), sum(s.ideal for s in chosen)

    def conflicts(self):
        """Shared-memory sites that take more wavefronts than their phases."""
        return [s for s in self.sites if s.space == "shared" and s.units > s.ideal]


def _source_lines(exe, addresses):
    """Innermost csrc/cuda source line of each address (the kernels' own code)."""
    if not addresses:
        return {}
    out = subprocess.run(["addr2line", "-e", str(exe), "-i", "-a", *addresses], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    where, current = {}, None
    for line in out:
        if line.startswith("0x"):
            current = int(line, 16)
        elif current is not None and current not in where and "csrc/cuda/" in line:
            where[current] = os.path.basename(line.split()[0])
    return {a: where.get(int(a, 16), "?") for a in addresses}


def read(path, exe):
    p = Profile()
    raw = []
    for line in Path(path).read_text().splitlines():
        kind, *rest = line.split()
        if kind == "site":
            raw.append(rest)
        elif kind == "region":
            p.requested[rest[0]], p.distinct[rest[0]] = int(rest[1]), int(rest[2])
        elif kind == "mma":
            p.mma = int(rest[0])
    where = _source_lines(exe, sorted({r[0] for r in raw}))
    merged = defaultdict(lambda: [0, 0, 0, 0])
    for addr, space, region, rw, nbytes, *counts in raw:
        m = merged[(where[addr], space, region, rw == "w", int(nbytes))]
        for i, n in enumerate(counts):
            m[i] += int(n)
    p.sites = [Site(*key, *vals) for key, vals in sorted(merged.items())]
    return p
