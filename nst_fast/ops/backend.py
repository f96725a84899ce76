"""Which implementation of each op runs: the compiled extension or its reference
(reference.py). The one place that decides: the ops' wrappers ask runs_extension.

NST_FAST_BACKEND=auto (default) uses the extension wherever it has a kernel for
the tensor's device and the reference elsewhere; "extension" insists on the
extension (an error where it is missing); "reference" never uses it.
"""
import importlib.util
import os
import warnings

import torch

from ..errors import UnknownBackend

BACKENDS = ("auto", "extension", "reference")

try:
    from .. import _C  # noqa: F401  (registers torch.ops.nst_fast.*)

    EXTENSION_ERROR = None
except ImportError as exc:  # pure-Python install, or a build for another torch
    EXTENSION_ERROR = exc

# Why a built extension did not load (one line); None where it loaded, or where
# none was built (a pure-Python install asked for the reference ops).
LOAD_FAILURE = None
if EXTENSION_ERROR is not None and importlib.util.find_spec("nst_fast._C") is not None:
    LOAD_FAILURE = (str(EXTENSION_ERROR).strip().splitlines() or [type(EXTENSION_ERROR).__name__])[0]

_forced = None
_told = set()  # what tell_unused_kernels has said in this process
_RUNS_ON = {}  # CUDA device index -> whether this build's CUDA kernels run on it


class KernelsNotLoaded(RuntimeWarning):
    """The compiled kernels cannot run here (not loaded, or built for other GPUs): the
    ops run in PyTorch."""


def tell_unused_kernels(devices=("cpu",), write=None) -> None:
    """Say once per process where the built kernels cannot run: the extension did not
    load (usually a build for another torch), or its CUDA code is for other GPUs than
    one of `devices`. Through `write` (a line of text) or as a KernelsNotLoaded warning.
    Nothing where the reference ops were asked for, or where no extension was built."""
    if get_backend() == "reference":
        return
    for key, message in _unused_kernels(devices):
        if key in _told:
            continue
        _told.add(key)
        if write is None:
            warnings.warn(KernelsNotLoaded(message), stacklevel=3)
        else:
            write(message)


def _unused_kernels(devices):
    if LOAD_FAILURE is not None:
        yield "load", (f"nst_fast's compiled kernels did not load ({LOAD_FAILURE}); every op runs in PyTorch "
                       f"instead, slower. Rebuild them against this torch ({torch.__version__}): "
                       "pip install --no-build-isolation --force-reinstall nst_fast, or from a clone "
                       "pip install --no-build-isolation -e .")
        return
    for device in map(torch.device, devices):
        if device.type == "cuda" and cuda_compiled() and not _cuda_runs_on(device):
            index = _cuda_index(device)
            major, minor = torch.cuda.get_device_capability(index)
            yield f"cuda:{index}", (
                f"nst_fast's CUDA kernels were built for other GPUs than cuda:{index} "
                f"({torch.cuda.get_device_name(index)}, compute capability {major}.{minor}); its ops run in "
                f"PyTorch there instead, slower. Rebuild them for it: TORCH_CUDA_ARCH_LIST={major}.{minor} "
                "pip install --no-build-isolation --force-reinstall nst_fast")


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _cuda_runs_on(device: torch.device) -> bool:
    """Whether this build's CUDA kernels have code for the GPU (asked once per GPU)."""
    index = _cuda_index(device)
    if index not in _RUNS_ON:
        if torch.compiler.is_compiling():  # the query cannot be traced; asked eagerly first
            return True
        _RUNS_ON[index] = _ask_kernel_image(index) > 0
    return _RUNS_ON[index]


def _ask_kernel_image(index: int) -> int:
    """The architecture (e.g. 90) of this build's code that runs on GPU `index`, 0 if none."""
    return torch.ops.nst_fast.cuda_kernel_image(index)


def extension_loaded() -> bool:
    return EXTENSION_ERROR is None


def set_backend(name):
    """Force "extension" or "reference" for every device, or go back to "auto" (or None)."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise UnknownBackend(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    _forced = name


def get_backend() -> str:
    name = _forced or os.environ.get("NST_FAST_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise UnknownBackend(f"NST_FAST_BACKEND must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def cuda_compiled() -> bool:
    """True if the extension was built with its CUDA kernels (whether or not a GPU is here)."""
    return _has_kernel("cuda")


def _query_kernel(op: str, device_type: str) -> bool:
    if not extension_loaded():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"nst_fast::{op}", key)
    except RuntimeError:  # an op that this build of the extension predates
        return False


# Every op with a kernel per device (csrc/register.cpp), each with its reference in reference.py.
OPS = ("gram", "style_loss_forward", "style_loss_backward", "style_loss_relu_backward", "conv3x3_winograd",
       "relu_max_pool2_", "relu_max_pool2_backward", "lbfgs_step", "loop_record_")

# Asked once at import: the dispatcher queries are not traceable by torch.compile.
_KERNELS = {(op, device_type): _query_kernel(op, device_type) for op in OPS for device_type in ("cpu", "cuda")}
_WINOGRAD_BF16 = extension_loaded() and bool(torch.ops.nst_fast.winograd_bf16_supported())


def has_op_kernel(op: str, device_type: str) -> bool:
    """True if the extension has a kernel of nst_fast::`op` for this device type."""
    return _KERNELS.get((op, device_type), False)


def _has_kernel(device_type: str) -> bool:
    return has_op_kernel("style_loss_forward", device_type)


def uses_extension(device) -> bool:
    """True where the fused ops for `device` run the compiled kernels."""
    device = torch.device(device)
    name = get_backend()
    if name == "reference":
        return False
    available = _has_kernel(device.type)
    if available and device.type == "cuda" and not _cuda_runs_on(device):
        if name == "extension":
            raise RuntimeError(f"NST_FAST_BACKEND=extension but nst_fast's CUDA kernels were built for other GPUs "
                               f"than {device}; rebuild with TORCH_CUDA_ARCH_LIST set for it, or use auto")
        return False
    if name == "extension" and not available:
        reason = f" ({EXTENSION_ERROR})" if EXTENSION_ERROR else ""
        raise RuntimeError(
            f"NST_FAST_BACKEND=extension but the nst_fast extension has no {device.type} kernel"
            f"{reason}; reinstall with `pip install --no-build-isolation .` or use auto"
        )
    return available


def runs_extension(op: str, device) -> bool:
    """True where nst_fast::`op` on `device` runs its compiled kernel, False where its
    reference (reference.py) runs instead. The one question every op's wrapper asks;
    raises RuntimeError where NST_FAST_BACKEND=extension and the device has no kernels."""
    device = torch.device(device)
    return uses_extension(device) and has_op_kernel(op, device.type)


def winograd_bf16_supported() -> bool:
    """True where conv3x3_winograd also takes bfloat16: a CPU with AVX512-BF16."""
    return _WINOGRAD_BF16


def runs_fused_adam(x: torch.Tensor) -> bool:
    """True where Adam's step on x, and on moments of x's dtype and layout, runs
    PyTorch's own fused kernel (torch._fused_adam_, as torch.optim.Adam(fused=True)):
    a contiguous float32 x on the CPU or CUDA. Its step counts are float32, so float64
    runs take the reference. PyTorch's kernel, not the extension's: NST_FAST_BACKEND
    leaves it alone."""
    return (x.dtype == torch.float32 and x.is_contiguous() and x.device.type in ("cpu", "cuda")
            and hasattr(torch, "_fused_adam_"))


def describe() -> dict:
    """The path each device uses, e.g. {"cpu": "extension", "cuda": "reference"}."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = {}
    for d in devices:
        try:
            out[d] = "extension" if uses_extension(d) else "reference"
        except RuntimeError as exc:
            out[d] = f"unavailable: {exc}"
    return out
