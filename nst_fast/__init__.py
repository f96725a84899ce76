"""nst_fast: Gatys neural style transfer with fused C++/CUDA style-loss kernels.

The names below load on first use, so that the command line starts (and answers
--help, or Ctrl-C) without waiting for torch to import.
"""
import importlib

from .errors import (CheckpointNotWritten, Interrupted, NonFiniteLoss, NstError, OutOfMemory, RunStopped,
                     WeightsUnavailable)

_LAZY = {
    "stylize": ("optimize.transfer", "stylize"), "StyleTransfer": ("optimize.transfer", "StyleTransfer"),
    "StepInfo": ("optimize.result", "StepInfo"), "Hooks": ("optimize.result", "Hooks"),
    "RunResult": ("optimize.result", "RunResult"), "Options": ("optimize.options", "Options"),
    "backend_info": ("ops.backend", "describe"), "set_backend": ("ops.backend", "set_backend"),
}

__all__ = [
    "stylize", "StyleTransfer", "Options", "Hooks", "RunResult", "StepInfo", "backend_info", "set_backend",
    "NstError", "WeightsUnavailable", "RunStopped", "NonFiniteLoss", "Interrupted", "CheckpointNotWritten",
    "OutOfMemory",
]
__version__ = "0.1.0"


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'nst_fast' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
