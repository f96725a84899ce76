// Whether this build's CUDA code can run on a given GPU. Every kernel is compiled for
// the same architectures (TORCH_CUDA_ARCH_LIST at build time), so a GPU that the probe
// below has no code for (no matching binary, no PTX it can compile) launches none.
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

namespace nst_fast {
namespace {

__global__ void probe_kernel() {}

// The architecture (e.g. 90) of the code that runs on CUDA device `device`, 0 if none.
int64_t cuda_kernel_image(int64_t device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attributes;
  if (cudaFuncGetAttributes(&attributes, probe_kernel) != cudaSuccess) {
    (void)cudaGetLastError();  // so that no later check reports this one
    return 0;
  }
  return attributes.binaryVersion;
}

}  // namespace

// The schema is in ../register.cpp. No tensor argument to dispatch on: the kernel is the
// op's CompositeImplicitAutograd one, where m.def(schema, function) puts a kernel.
TORCH_LIBRARY_IMPL(nst_fast, CompositeImplicitAutograd, m) { m.impl("cuda_kernel_image", &cuda_kernel_image); }

}  // namespace nst_fast
