"""nst_fast: Gatys neural style transfer with fused C++/CUDA style-loss kernels."""
from .backend import describe as backend_info
from .backend import set_backend
from .errors import Interrupted, NonFiniteLoss, NstError, WeightsUnavailable
from .options import Options
from .stylize import StepInfo, StyleTransfer, stylize

__all__ = [
    "stylize", "StyleTransfer", "Options", "StepInfo", "backend_info", "set_backend",
    "NstError", "WeightsUnavailable", "NonFiniteLoss", "Interrupted",
]
__version__ = "0.1.0"
