#pragma once
// The Winograd convolution's batched GEMM, M_p = V_p U_p for each of its 36 points,
// with an AVX-512 register-blocked kernel. On the short blocks the convolution
// hands it (64 rows), BLAS's general kernels ran at ~70% of what this one does.
#include <cstdint>

namespace nst_fast {

// True where point_gemm can run: an AVX-512 CPU and K a multiple of 32.
bool point_gemm_supported(int64_t k);

// For p < points: m_p (rows x k) = v_p (rows x c) u_p (c x k), all row-major and
// dense; the planes of v and m lie v_plane and m_plane floats apart, u's c * k.
void point_gemm(int64_t points, int64_t rows, int64_t c, int64_t k, const float* v, int64_t v_plane,
                const float* u, float* m, int64_t m_plane);

// True where point_gemm_bf16 can run: a CPU with AVX512-BF16 and K a multiple of 32.
bool point_gemm_bf16_supported(int64_t k);

// As point_gemm with bfloat16 operands (raw bits) and float32 products and sums
// (vdpbf16ps): v_p is (rows x c), c even; u_p is packed in pairs of its rows,
// (c / 2, k, 2), so that one 32-bit word holds u[2i][j] and u[2i + 1][j].
void point_gemm_bf16(int64_t points, int64_t rows, int64_t c, int64_t k, const uint16_t* v, int64_t v_plane,
                     const uint16_t* u, float* m, int64_t m_plane);

}  // namespace nst_fast
