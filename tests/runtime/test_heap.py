"""keep_freed_memory(): large blocks reuse freed pages inside it, and only inside it.

The page faults are counted in a fresh interpreter, where the heap holds no free
chunks whose pages an earlier malloc_trim gave back to the kernel.
"""
import json
import os
import resource
import subprocess
import sys

import pytest

from nst_fast.runtime import heap

pytestmark = pytest.mark.skipif(not heap.keeps_freed_memory(), reason="needs glibc, and malloc tunables unset")

PAGES = (64 << 20) // resource.getpagesize()  # of one block, over glibc's largest mmap threshold

# Rounds of three fresh 64 MiB tensors, each written and freed -> minor page faults
# of each round. Aligned blocks (as torch allocates them) settle into reused heap
# chunks after a few rounds.
_ROUNDS = r"""
import json, resource, sys
import torch
from nst_fast.runtime import heap

def rounds(n):
    faults = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            torch.empty(16 << 20).fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults

def rss_pages():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])

out = {"outside": rounds(3)}
with heap.keep_freed_memory() as kept:
    with heap.keep_freed_memory():
        out["inside"] = rounds(6)
    out["outer_only"] = rounds(2)
    out["rss_inside"] = rss_pages()
out["kept"], out["rss_after"] = kept, rss_pages()
print(json.dumps(out))
"""


def _fresh_rounds(**env):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    proc = subprocess.run([sys.executable, "-c", _ROUNDS], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_inside_and_unmapped_outside():
    r = _fresh_rounds()
    assert r["kept"]
    assert all(f >= 3 * PAGES for f in r["outside"][1:]), r  # every block faulted in anew
    assert all(f < PAGES // 10 for f in r["inside"][3:] + r["outer_only"]), r  # a nested exit keeps it on
    assert r["rss_inside"] - r["rss_after"] >= PAGES, r  # the kept blocks are given back at the end


@pytest.mark.slow
@pytest.mark.parametrize("env", [{"NST_FAST_KEEP_MEMORY": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}])
def test_switched_off_by_the_environment(env, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert not heap.keeps_freed_memory()
    r = _fresh_rounds(**env)
    assert not r["kept"]
    assert all(f >= 3 * PAGES for f in r["inside"][1:]), r


def test_disabled_for_other_devices():
    with heap.keep_freed_memory(enabled=False) as kept:
        assert not kept


def test_kept_by_size_or_for_every_run(monkeypatch):
    small = 11 << 20  # conv1's activation at 256 px, under glibc's largest mmap threshold
    monkeypatch.delenv("NST_FAST_KEEP_MEMORY", raising=False)
    assert not heap.worth_keeping(small) and heap.worth_keeping(heap.MMAP_THRESHOLD_MAX + 1)
    monkeypatch.setenv("NST_FAST_KEEP_MEMORY", "all")
    assert heap.worth_keeping(small)
    monkeypatch.setenv("NST_FAST_KEEP_MEMORY", "0")
    assert not heap.worth_keeping(heap.MMAP_THRESHOLD_MAX + 1)
