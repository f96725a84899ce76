"""Where a run computes: its devices, how the network is split over them, the
precision its steps run in, and what running out of their memory looks like."""
import contextlib

import torch

from ..errors import NstError

DEFAULT_SPLIT = "pool1"  # two devices: conv1_x's full-size activations on the first, the rest on the second


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise NstError(f"unknown device {device!r}: {exc}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise NstError(f"device {str(device)!r} is not supported; use cpu, cuda (cuda:N) or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NstError("device cuda was asked for but no CUDA GPU is available here; use device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise NstError("device mps was asked for but this machine has no Apple GPU (MPS); use device cpu")
    return device


def parse_devices(device) -> list:
    """"cuda:0,cuda:1" / a list / one device / None (cuda if there is one, else cpu) ->
    [torch.device, ...]."""
    if isinstance(device, str) and "," in device:
        device = [d.strip() for d in device.split(",")]
    if isinstance(device, (list, tuple)):
        if not device:
            raise NstError("no device given")
        return [_device(d) for d in device]
    return [_device(device)]


def split_layers(split_at, devices) -> list:
    """The layers where each device after the first starts ("pool1,relu3_1" or a list)."""
    if isinstance(split_at, str):
        split_at = [n.strip() for n in split_at.split(",") if n.strip()]
    split_at = list(split_at or [])
    if len(devices) > 1 and not split_at:
        if len(devices) > 2:
            raise NstError(f"say where to split the network over {len(devices)} devices (split_at)")
        split_at = [DEFAULT_SPLIT]
    if len(devices) == 1 and split_at:
        raise NstError("split_at needs more than one device")
    return split_at


def where(devices) -> str:
    """The devices for a message: "cuda:0, cuda:1"."""
    return ", ".join(str(d) for d in dict.fromkeys(devices))


@contextlib.contextmanager
def tf32_mode(precision: str):
    """TF32 matmuls and convolutions on (tf32) or off (fp32, bf16). A step's backward
    needs it as much as its forward: it picks the backward's convolutions and style
    kernels."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def autocast_mode(precision: str, devices):
    """bf16: autocast to bfloat16 on every type of device among `devices` (one device or a
    list); a forward pass only, the backward follows the forward's dtypes."""
    types = sorted({d.type for d in (devices if isinstance(devices, (list, tuple)) else [devices])})
    with contextlib.ExitStack() as stack:
        if precision == "bf16":
            for device_type in types:
                stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
        yield


@contextlib.contextmanager
def precision_mode(precision: str, devices):
    """fp32: exact; tf32: TF32 matmuls and convolutions; bf16: autocast to bfloat16."""
    with tf32_mode(precision), autocast_mode(precision, devices):
        yield


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory errors: its own class on a GPU, a RuntimeError on the CPU."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def memory_advice(device: torch.device) -> str:
    lighter = "precision bf16 (--precision bf16)" if device.type == "cuda" else "low_memory (--low-memory)"
    return f"ask for a smaller size, let fit_memory (--fit-memory) pick one, or use {lighter}"
