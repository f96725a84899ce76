"""The source distribution (what `pip install nst_fast` builds from) holds everything
the build and the tests need; a build that cannot work says so."""
import importlib.machinery
import json
import os
import re
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
    assert "csrc/include/nst_fast/style_loss.h" in expected and "csrc/cuda/style_loss_cuda.cu" in expected
    assert "csrc/cuda/style_loss_forward.cuh" in expected and "tests/cuda_emulator/emulator.h" in expected
    assert expected - members == set()


def test_build_without_torch_says_how_to_install(tmp_path):
    """pip's default isolated build environment has no torch: the build stops with
    what to do instead of an ImportError's traceback."""
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shim"))
    env.pop("NST_FAST_NO_EXTENSION", None)
    proc = subprocess.run([sys.executable, str(ROOT / "setup.py"), "--name"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "pip install --no-build-isolation" in proc.stderr and "NST_FAST_NO_EXTENSION=1" in proc.stderr
    assert "Traceback" not in proc.stderr


_BROKEN_BUILD = r"""
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import nst_fast
    nst_fast.StyleTransfer("random", device="cpu")
    nst_fast.StyleTransfer("random", device="cpu")
print(json.dumps({"backends": nst_fast.backend_info(),
                  "warnings": [(w.category.__name__, str(w.message)) for w in caught]}))
"""


@pytest.fixture
def broken_build(tmp_path):
    """A copy of the package whose compiled extension is there but does not load, as a
    build for another torch does not."""
    if not any(name.startswith("_C.") for name in os.listdir(ROOT / "nst_fast")):
        pytest.skip("no compiled extension in this checkout")
    shutil.copytree(ROOT / "nst_fast", tmp_path / "nst_fast", ignore=shutil.ignore_patterns("__pycache__", "_C.*"))
    (tmp_path / "nst_fast" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"not a library")
    return dict(os.environ, PYTHONPATH=str(tmp_path), NST_FAST_BACKEND="auto"), tmp_path


def test_kernels_that_do_not_load_are_named_once_and_the_reference_runs(broken_build):
    env, where = broken_build
    proc = subprocess.run([sys.executable, "-c", _BROKEN_BUILD], cwd=where, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["backends"]["cpu"] == "reference"
    (warning,) = report["warnings"]  # once, for both runs
    assert warning[0] == "KernelsNotLoaded"
    assert "did not load" in warning[1] and "pip install --no-build-isolation" in warning[1]


@pytest.mark.slow
def test_cli_names_kernels_that_do_not_load_in_one_line(broken_build, tmp_path):
    env, where = broken_build
    out = tmp_path / "out.png"
    proc = subprocess.run([sys.executable, "-c", "import sys; from nst_fast.app.cli import main; sys.exit(main())",
                           "--demo", "--weights", "random", "--size", "32", "--steps", "1", "-q", "-o", str(out)],
                          cwd=where, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "did not load" in line]
    assert len(lines) == 1 and lines[0].startswith("nst-fast: WARNING: nst_fast's compiled kernels did not load ("), \
        proc.stderr
    assert "Traceback" not in proc.stderr and "KernelsNotLoaded" not in proc.stderr
    assert out.stat().st_size > 0



def _pip_packages(text: str) -> set:
    """The package names (versions dropped) of every `pip install` in text, options and local paths left out."""
    names = set()
    for command in re.findall(r"pip install ([^&|;\n]*)", text):
        for word in command.split():
            if not word.startswith(("-", ".", "/", "$", '"')):
                names.add(re.split(r"[<>=\[]", word)[0].lower())
    return names


@pytest.mark.skipif(not (ROOT / ".ci" / "run").exists(), reason="not a source checkout")
def test_ci_installs_exactly_what_the_readme_quick_start_installs():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert _pip_packages(ci) - {"pip"} == _pip_packages(quick_start) != set()
    test_command = re.search(r"^python -m pytest .*$", quick_start, re.MULTILINE).group(0)
    assert re.search(rf"^{re.escape(test_command)}(\s+#.*)?$", ci, re.MULTILINE), "CI runs the README's test command"
