import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nst_fast.ops import backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "nst_fast" / "examples"
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights" / "vgg19_caffe_conv1_1-conv3_4.pth"


class OpNames(TorchDispatchMode):
    """Records the name of every op dispatched inside it (e.g. "aten::add")."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.fixture(params=["extension", "reference"])
def op_backend(request):
    """Runs a test once through the compiled ops and once through the reference."""
    if request.param == "extension" and not backend.extension_loaded():
        pytest.skip(f"extension not built: {backend.EXTENSION_ERROR}")
    backend.set_backend(request.param)
    yield request.param
    backend.set_backend(None)


def interrupt_cli(argv, marker, signum=signal.SIGINT):
    """Run `python -m nst_fast.app.cli argv`, send it `signum` (Ctrl-C's SIGINT) once
    `marker` (a progress line) shows on stderr -> (exit status, the rest of stderr)."""
    # A shell starts background jobs with SIGINT ignored, and children inherit that:
    # give the command a terminal's default, as if a user pressed Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-m", "nst_fast.app.cli", *argv], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = ""
        deadline = time.time() + 120
        while marker not in seen and time.time() < deadline:
            seen += proc.stderr.read(1)
        time.sleep(0.5)
        proc.send_signal(signum)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, rest


@pytest.fixture
def interrupt():
    return interrupt_cli


@pytest.fixture(scope="session")
def random_weights_file(tmp_path_factory):
    """A seeded random VGG-19 saved as torchvision's full state dict."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg19()
    path = tmp_path_factory.mktemp("weights") / "vgg19_random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def small_images(tmp_path_factory):
    """A 64x48 content image and a 40x40 style image with structure (never flat)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    content = Image.open(EXAMPLES / "content.png").resize((64, 48))
    style = Image.open(EXAMPLES / "style.png").resize((40, 40))
    content.save(d / "content.png")
    style.save(d / "style.png")
    return d / "content.png", d / "style.png"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("NST_FAST_REQUIRE_EXTENSION") and not backend.extension_loaded():
        raise RuntimeError(f"NST_FAST_REQUIRE_EXTENSION is set but the extension failed: {backend.EXTENSION_ERROR}")


def out_of_memory_at_call(monkeypatch, n, error):
    """The n-th step of a run fails as an allocation would."""
    from nst_fast.optimize.steps import StepRunner

    step = StepRunner.__call__

    def failing(self):
        if self.calls + 1 == n:
            raise error
        return step(self)

    monkeypatch.setattr(StepRunner, "__call__", failing)


CPU_OUT_OF_MEMORY = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                                 "memory: you tried to allocate 4000000000 bytes. Error code 12")
