"""Builds nst_fast and its C++/CUDA extension nst_fast._C.

NST_FAST_NO_EXTENSION=1  pure-Python install (the reference ops only)
NST_FAST_FORCE_CUDA=1    compile the CUDA kernels even if no toolkit is detected
NST_FAST_NO_CUDA=1       skip the CUDA kernels
TORCH_CUDA_ARCH_LIST     the CUDA architectures to build for (torch's own variable; default: the
                         visible GPUs', or 9.0+PTX where none is visible)
"""
import glob
import os
import sys

from setuptools import find_packages, setup


DEFAULT_ARCH_LIST = "9.0+PTX"  # Hopper, where the kernels are tuned; the PTX runs on later GPUs
NO_TORCH = """nst_fast: building its kernels needs torch, and none is importable here.
The kernels are built against the torch that will run them, so install torch first and
build without pip's isolated environment (which hides it):
    pip install torch torchvision
    pip install --no-build-isolation nst_fast      (from a clone: pip install --no-build-isolation .)
or install without the kernels (every op in PyTorch, slower): NST_FAST_NO_EXTENSION=1 pip install nst_fast"""


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


def extension_modules():
    if _flag("NST_FAST_NO_EXTENSION"):
        return [], {}
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        # torch may guess a CUDA_HOME that cannot link -lcudart; the toolkit's own folder can.
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit(NO_TORCH)

    sources = glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp")
    cuda_sources = glob.glob("csrc/cuda/*.cu")
    # The contracts between the registration and the kernels: #include "nst_fast/....h".
    # Absolute, as the compiler may run in the build folder.
    include_dirs = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "include")]
    use_cuda = not _flag("NST_FAST_NO_CUDA") and (
        _flag("NST_FAST_FORCE_CUDA") or cpp_extension.CUDA_HOME is not None
    )
    extra = {"cxx": ["-O3"]}
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inlined into the extension and runs on one thread unless
        # it is compiled with OpenMP; the libgomp torch already loaded is the one used.
        extra["cxx"].append("-fopenmp")
        link.append("-fopenmp")
    if use_cuda and cuda_sources and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        import torch

        if torch.cuda.device_count() == 0:
            # torch's own default takes the visible GPUs' architectures, and fails with
            # an IndexError where there are none (a build machine, a login node).
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
            print(f"nst_fast: no GPU visible; building the CUDA kernels for {DEFAULT_ARCH_LIST} "
                  "(set TORCH_CUDA_ARCH_LIST for others)", file=sys.stderr)
    if use_cuda and cuda_sources:
        extra["nvcc"] = ["-O3", "--use_fast_math", "-lineinfo"]
        ext = cpp_extension.CUDAExtension(
            "nst_fast._C", sources + cuda_sources, include_dirs=include_dirs, extra_compile_args=extra,
            extra_link_args=link, py_limited_api=False,
        )
    else:
        ext = cpp_extension.CppExtension(
            "nst_fast._C", sources, include_dirs=include_dirs, extra_compile_args=extra, extra_link_args=link,
            py_limited_api=False,
        )
    build_ext = cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = extension_modules()

setup(
    name="nst_fast",
    version="0.1.0",
    description="Fast Gatys neural style transfer with fused C++/CUDA style-loss kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nst_fast", "nst_fast.*"]),
    package_data={"nst_fast": ["examples/*.png", "examples/*.jpg"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "torchvision", "pillow", "numpy"],
    extras_require={"test": ["pytest", "pytest-benchmark", "protobuf"], "plot": ["matplotlib"]},
    entry_points={"console_scripts": ["nst-fast=nst_fast.app.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
