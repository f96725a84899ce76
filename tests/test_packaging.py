"""The source distribution (what `pip install nst_fast` builds from) holds everything
the build and the tests need."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import ROOT


def _sources():
    for folder in ("csrc", "nst_fast", "tests", "benchmarks"):
        for dirpath, dirnames, filenames in os.walk(ROOT / folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                if name.endswith((".cpp", ".cu", ".cuh", ".h", ".py", ".png", ".sh")):
                    yield os.path.relpath(os.path.join(dirpath, name), ROOT)


@pytest.mark.skipif(not (ROOT / "MANIFEST.in").exists(), reason="not a source checkout")
def test_sdist_holds_every_source_header_and_example(tmp_path):
    # A copy without the build's leftovers: setuptools also packs what an old
    # egg-info's SOURCES.txt lists, which would hide a file MANIFEST.in misses.
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "build", "dist", ".*")
    for name in ("csrc", "nst_fast", "tests", "benchmarks"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    for name in ("setup.py", "setup.cfg", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, tree / name)
    # Without the extension the build lists no kernel sources itself: MANIFEST.in must.
    env = dict(os.environ, NST_FAST_NO_EXTENSION="1")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=tree, env=env,
                   check=True, capture_output=True)
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    expected = set(_sources())
    assert "csrc/style_loss.h" in expected and "csrc/cuda/style_loss_cuda.cu" in expected
    assert "csrc/cuda/style_loss_kernels.cuh" in expected and "tests/cuda_emulator/emulator.h" in expected
    assert expected - members == set()
