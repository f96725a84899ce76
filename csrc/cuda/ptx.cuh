// The PTX instructions the style-loss kernels use, one wrapper each. The CPU
// emulator of the kernels (tests/cuda_emulator) provides the same names.
#pragma once

#include <cstdint>

// Dynamic shared memory of a kernel, as float.
#define NST_DYNAMIC_SMEM(name) extern __shared__ __align__(16) float name[]

// atomicAdd on a float2 (one red.global.add.v2.f32) exists from sm_90.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define NST_FAST_PAIR_ATOMICS 1
#else
#define NST_FAST_PAIR_ATOMICS 0
#endif

namespace nst_fast {
namespace kernels {

// Round to nearest (ties away) to tf32: the low 13 mantissa bits become zero.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// D += A B for one 16x8x8 tile, tf32 operands, fp32 accumulation (warp-wide).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// D += A B for one 16x8x16 tile of bf16 (BF16) or fp16 operands, two to a register
// (the lower index in the low half), fp32 accumulation (warp-wide).
template <bool BF16>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// Four 8x8 matrices of 16-bit elements from shared memory (warp-wide): lane i gives the
// address of row i % 8 of matrix i / 8 (16 bytes, 16-byte aligned); register j of lane
// i gets elements 2 (i % 4) and 2 (i % 4) + 1 of row i / 4 of matrix j, or with TRANS
// the matrix transposed: rows 2 (i % 4) and 2 (i % 4) + 1 of column i / 4. For 32-bit
// elements (no TRANS) the matrices are 8 x 4 and lane i gets element i % 4 of row i / 4.
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  }
}

// 16-byte asynchronous copy global -> shared; pred false: zero-fill.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gsrc, bool pred) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gsrc), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace kernels
}  // namespace nst_fast
