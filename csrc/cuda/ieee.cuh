#pragma once
// Float comparisons and an add that keep subnormal numbers whatever the build's flags.
// The extension compiles with --use_fast_math, whose float instructions flush
// subnormals to zero; PyTorch's elementwise ops do not, and the fused epilogues must
// equal them bit for bit. Comparisons go through the bits, the add through PTX's
// add.rn.f32 without .ftz.
#include <cstdint>

namespace nst_fast {
namespace kernels {
namespace ieee {

__device__ __forceinline__ bool is_nan(float v) { return (__float_as_uint(v) & 0x7fffffffu) > 0x7f800000u; }

// An integer in v's order for v not NaN, with -0 and +0 equal.
__device__ __forceinline__ int32_t order_key(float v) {
  const uint32_t u = __float_as_uint(v);
  const int32_t magnitude = static_cast<int32_t>(u & 0x7fffffffu);
  return (u >> 31) != 0 ? -magnitude : magnitude;
}

// v <= 0: false for NaN, as threshold_backward's mask.
__device__ __forceinline__ bool at_most_zero(float v) { return !is_nan(v) && order_key(v) <= 0; }

// v > w: false where either is NaN.
__device__ __forceinline__ bool greater(float v, float w) {
  return !is_nan(v) && !is_nan(w) && order_key(v) > order_key(w);
}

__device__ __forceinline__ float add(float a, float b) {
#ifdef __CUDA_ARCH__
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a + b;  // the CPU emulator: IEEE already
#endif
}

}  // namespace ieee
}  // namespace kernels
}  // namespace nst_fast
