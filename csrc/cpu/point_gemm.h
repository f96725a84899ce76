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

}  // namespace nst_fast
