// AVX-512 kernel of point_gemm.h: each call to `tile` keeps an MR x 32 block of the
// output in 2 * MR zmm registers while it walks the depth, broadcasting one value
// of V per row and loading one 32-wide row of U per step.
#include "nst_fast/point_gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define NST_FAST_AVX512 __attribute__((target("avx512f")))
#define NST_FAST_AVX512BF16 __attribute__((target("avx512f,avx512bf16")))
#define NST_FAST_HAS_KERNEL 1
#else
#define NST_FAST_HAS_KERNEL 0
#endif

namespace nst_fast {

#if NST_FAST_HAS_KERNEL
namespace {

constexpr int64_t kNr = 32;  // output columns per tile: two zmm registers
constexpr int kMr = 12;      // output rows per full tile: 24 accumulators of 32
constexpr int64_t kKc = 128;  // depth per pass (see plane_gemm)

template <int MR>
NST_FAST_AVX512 inline __attribute__((always_inline)) void tile(const float* a, int64_t lda, const float* b,
                                                                int64_t ldb, float* c, int64_t ldc,
                                                                int64_t depth, bool accumulate) {
  __m512 lo[MR], hi[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    lo[r] = accumulate ? _mm512_loadu_ps(c + r * ldc) : _mm512_setzero_ps();
    hi[r] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < depth; ++d) {
    const __m512 b0 = _mm512_loadu_ps(b + d * ldb), b1 = _mm512_loadu_ps(b + d * ldb + 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + d]);
      lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
      hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * ldc, lo[r]);
    _mm512_storeu_ps(c + r * ldc + 16, hi[r]);
  }
}

// Depth in slices of kKc, so that the 32-wide slice of U a tile walks (kKc x 32
// floats, 16 KB) stays in L1 across the row tiles.
NST_FAST_AVX512 void plane_gemm(int64_t rows, int64_t c, int64_t k, const float* v, const float* u, float* m) {
  for (int64_t c0 = 0; c0 < c; c0 += kKc) {
    const int64_t depth = std::min(kKc, c - c0);
    const bool acc = c0 > 0;
    for (int64_t k0 = 0; k0 < k; k0 += kNr) {
      const float* b = u + c0 * k + k0;
      auto at = [&](int64_t r) { return std::make_pair(v + r * c + c0, m + r * k + k0); };
      int64_t r = 0;
      for (; r + kMr <= rows; r += kMr) tile<kMr>(at(r).first, c, b, k, at(r).second, k, depth, acc);
      if (r + 8 <= rows) {
        tile<8>(at(r).first, c, b, k, at(r).second, k, depth, acc);
        r += 8;
      }
      if (r + 4 <= rows) {
        tile<4>(at(r).first, c, b, k, at(r).second, k, depth, acc);
        r += 4;
      }
      for (; r < rows; ++r) tile<1>(at(r).first, c, b, k, at(r).second, k, depth, acc);
    }
  }
}

// The bfloat16 tile: each step takes a pair of depths at once, one 32-bit word of a
// row of V broadcast against 16 packed pairs of U per register (vdpbf16ps sums
// both products into the float32 accumulator).
template <int MR>
NST_FAST_AVX512BF16 inline __attribute__((always_inline)) void tile_bf16(const uint16_t* a, int64_t lda,
                                                                         const uint16_t* b, int64_t ldb, float* c,
                                                                         int64_t ldc, int64_t pairs,
                                                                         bool accumulate) {
  __m512 lo[MR], hi[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    lo[r] = accumulate ? _mm512_loadu_ps(c + r * ldc) : _mm512_setzero_ps();
    hi[r] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < pairs; ++d) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + d * ldb);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + d * ldb + 32);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      int32_t word;
      std::memcpy(&word, a + r * lda + 2 * d, sizeof(word));
      const __m512bh x = (__m512bh)_mm512_set1_epi32(word);
      lo[r] = _mm512_dpbf16_ps(lo[r], x, b0);
      hi[r] = _mm512_dpbf16_ps(hi[r], x, b1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * ldc, lo[r]);
    _mm512_storeu_ps(c + r * ldc + 16, hi[r]);
  }
}

// As plane_gemm, in slices of kKc pairs of depths (the 32-wide slice of packed U a
// tile walks is kKc x 32 words, 16 KB).
NST_FAST_AVX512BF16 void plane_gemm_bf16(int64_t rows, int64_t c, int64_t k, const uint16_t* v, const uint16_t* u,
                                         float* m) {
  const int64_t pairs = c / 2, ldb = 2 * k;
  for (int64_t p0 = 0; p0 < pairs; p0 += kKc) {
    const int64_t depth = std::min(kKc, pairs - p0);
    const bool acc = p0 > 0;
    for (int64_t k0 = 0; k0 < k; k0 += kNr) {
      const uint16_t* b = u + p0 * ldb + 2 * k0;
      auto at = [&](int64_t r) { return std::make_pair(v + r * c + 2 * p0, m + r * k + k0); };
      int64_t r = 0;
      for (; r + kMr <= rows; r += kMr) tile_bf16<kMr>(at(r).first, c, b, ldb, at(r).second, k, depth, acc);
      if (r + 8 <= rows) {
        tile_bf16<8>(at(r).first, c, b, ldb, at(r).second, k, depth, acc);
        r += 8;
      }
      if (r + 4 <= rows) {
        tile_bf16<4>(at(r).first, c, b, ldb, at(r).second, k, depth, acc);
        r += 4;
      }
      for (; r < rows; ++r) tile_bf16<1>(at(r).first, c, b, ldb, at(r).second, k, depth, acc);
    }
  }
}

}  // namespace

bool point_gemm_supported(int64_t k) {
  // NST_FAST_POINT_GEMM=0 hands every point's GEMM to BLAS (an A/B switch).
  static const bool enabled = [] {
    const char* flag = std::getenv("NST_FAST_POINT_GEMM");
    return !(flag && std::string(flag) == "0") && __builtin_cpu_supports("avx512f");
  }();
  return enabled && k % kNr == 0;
}

void point_gemm(int64_t points, int64_t rows, int64_t c, int64_t k, const float* v, int64_t v_plane,
                const float* u, float* m, int64_t m_plane) {
  for (int64_t p = 0; p < points; ++p) plane_gemm(rows, c, k, v + p * v_plane, u + p * c * k, m + p * m_plane);
}

bool point_gemm_bf16_supported(int64_t k) {
  static const bool cpu = __builtin_cpu_supports("avx512bf16");
  return cpu && k % kNr == 0;
}

void point_gemm_bf16(int64_t points, int64_t rows, int64_t c, int64_t k, const uint16_t* v, int64_t v_plane,
                     const uint16_t* u, float* m, int64_t m_plane) {
  for (int64_t p = 0; p < points; ++p) {
    plane_gemm_bf16(rows, c, k, v + p * v_plane, u + p * c * k, m + p * m_plane);
  }
}

#else

bool point_gemm_supported(int64_t) { return false; }

void point_gemm(int64_t, int64_t, int64_t, int64_t, const float*, int64_t, const float*, float*, int64_t) {}

bool point_gemm_bf16_supported(int64_t) { return false; }

void point_gemm_bf16(int64_t, int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, float*,
                     int64_t) {}

#endif

}  // namespace nst_fast
