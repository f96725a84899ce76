"""Where the built kernels cannot run, the ops fall back to PyTorch and the user is told
once: an extension that does not load (tests/test_packaging.py builds one), or CUDA
code for other GPUs, simulated here; tests/ops/test_cuda_ops.py asks a real GPU."""
import pytest
import torch

from nst_fast.ops import backend


@pytest.fixture
def told(monkeypatch):
    monkeypatch.setattr(backend, "_told", set())
    monkeypatch.setenv("NST_FAST_BACKEND", "auto")
    return []


@pytest.fixture
def gpu_without_code(monkeypatch):
    """A CUDA build, and cuda:0 a GPU it holds no code for."""
    monkeypatch.setattr(backend, "LOAD_FAILURE", None)
    monkeypatch.setattr(backend, "_KERNELS", {**backend._KERNELS, ("style_loss_forward", "cuda"): True})
    monkeypatch.setattr(backend, "_RUNS_ON", {0: False})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA GeForce RTX 3060")


def test_nothing_said_where_the_kernels_load_or_none_were_built(told, monkeypatch):
    monkeypatch.setattr(backend, "LOAD_FAILURE", None)
    backend.tell_unused_kernels(["cpu"], told.append)
    assert told == []


def test_a_load_failure_is_said_once_unless_the_reference_was_asked_for(told, monkeypatch):
    monkeypatch.setattr(backend, "LOAD_FAILURE", "undefined symbol: _ZN3c10")
    monkeypatch.setenv("NST_FAST_BACKEND", "reference")
    backend.tell_unused_kernels(["cpu"], told.append)
    assert told == []
    monkeypatch.setenv("NST_FAST_BACKEND", "auto")
    backend.tell_unused_kernels(["cpu"], told.append)
    backend.tell_unused_kernels(["cpu"], told.append)
    assert len(told) == 1 and "(undefined symbol: _ZN3c10)" in told[0] and "--no-build-isolation" in told[0]


def test_a_gpu_the_build_has_no_code_for_runs_the_reference(told, gpu_without_code, monkeypatch):
    assert not backend.uses_extension("cuda:0") and not backend.uses_extension("cuda")
    backend.tell_unused_kernels(["cuda:0", "cpu"], told.append)
    backend.tell_unused_kernels(["cuda"], told.append)
    (message,) = told
    assert "other GPUs than cuda:0 (NVIDIA GeForce RTX 3060, compute capability 8.6)" in message
    assert "TORCH_CUDA_ARCH_LIST=8.6 pip install --no-build-isolation" in message
    monkeypatch.setenv("NST_FAST_BACKEND", "extension")
    with pytest.raises(RuntimeError, match="built for other GPUs than cuda:0"):
        backend.uses_extension("cuda:0")


def test_a_gpu_the_build_has_code_for_runs_the_kernels(told, gpu_without_code, monkeypatch):
    monkeypatch.setattr(backend, "_RUNS_ON", {0: True})
    assert backend.uses_extension("cuda:0")
    backend.tell_unused_kernels(["cuda:0"], told.append)
    assert told == []


def test_the_gpu_is_asked_once_and_not_while_compiling(gpu_without_code, monkeypatch):
    asked = []
    monkeypatch.setattr(backend, "_RUNS_ON", {})
    monkeypatch.setattr(backend, "_ask_kernel_image", lambda index: asked.append(index) or 90)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert backend.uses_extension("cuda:1") and asked == []
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert backend.uses_extension("cuda:1") and backend.uses_extension("cuda:1") and asked == [1]
