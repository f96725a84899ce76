// The tensor-core side of the style-loss kernels: the 64x64 output tile, 128 threads
// (2x2 warps of 32x32), a 32-deep reduction stage, and one stage's warp products through
// mma.sync.m16n8k8 tf32 (m16n8k16 for 2-byte values) with fp32 accumulation.
//
//   * float32 operands use 3xTF32: x = hi + lo (both tf32), a*b ~ ah*bh + ah*bl + al*bh,
//     which keeps fp32-level accuracy (the dropped al*bl term is ~2^-22 relative).
//   * bfloat16 / float16 values are exactly representable in tf32 (8 / 10 mantissa
//     bits), so they need one product per pair; the fp32 residual D is still split
//     in the backward (2 products). On the cp.async path the forward multiplies them
//     as they are, through mma.sync.m16n8k16 bf16 / f16 (the same exact products, half
//     the instructions), and the bf16 backward splits D into three exact bf16 parts
//     for m16n8k16 (3 products per 16 of k instead of 4 of 8).
//   * where the user allowed TF32 matmuls (torch.backends.cuda.matmul.allow_tf32, as
//     nst_fast's tf32 precision mode does), float32 operands are rounded to tf32 and
//     take one product, as cuBLAS's TF32 GEMMs do.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#ifndef NST_FAST_PTX_PROVIDED
#include "ptx.cuh"
#endif

namespace nst_fast {
namespace kernels {

constexpr int TILE = 64;               // output tile edge
constexpr int BK = 32;                 // reduction depth per shared-memory stage
constexpr int THREADS = 128;           // 4 warps, 2x2 of 32x32
constexpr int LD_KC = BK + 4;          // [row][k] layout: fragment reads conflict-free (LD = 4 mod 32)
constexpr int LD_NC = TILE + 8;        // [k][row] layout: fragment reads conflict-free (LD = 8 mod 32)
constexpr int SMEM_TILE = TILE * LD_KC;  // floats per operand buffer
static_assert(TILE * LD_KC == BK * LD_NC, "both tile layouts use the same shared-memory size");

// ---------------------------------------------------------------- shared-memory layouts
// A tile layout's at(r, c) is the offset of the element in memory row r, column c.
// [row][k] tiles keep an operand row per memory row, [k][row] tiles a k per memory row.
template <int LD>
struct Padded {  // rows of LD elements
  __device__ __forceinline__ static int at(int r, int c) { return r * LD + c; }
};
using NcTile = Padded<LD_NC>;

// The cp.async path keeps bf16 / fp16 features as they are. Their [row][k] tiles are
// not padded but swizzled: a row holds BK values (four 16-byte chunks), and chunk c of
// row r sits at chunk c ^ ((r >> 1) & 3). The 8 rows an ldmatrix reads and the 2 rows a
// quarter-warp of cp.async fills then each fall in 8 distinct 16-byte bank groups, which
// no padded stride gives both (the 40-value stride used before cost the fills 2-way
// conflicts). Their [k][row] tiles keep LD_NC = 72: 36 words, so a fragment read's 4 k
// rows land 4 banks apart and a row's 8 chunks fill one quarter-warp without conflict.
struct Swizzled16 {
  __device__ __forceinline__ static int at(int r, int k) {
    return r * BK + ((((k >> 3) ^ (r >> 1)) & 3) << 3) + (k & 7);
  }
};
static_assert(TILE * BK * 2 <= SMEM_TILE * 4 && BK * LD_NC * 2 <= SMEM_TILE * 4, "2-byte tiles fit the float buffers");

// An fp32 [row][k] tile read as float pairs by rows g, g + 1, .., g + 3 of a half-warp
// (the bf16 backward's residual D): 32-byte segment s of row r sits at s ^ (r & 3), so
// the 4 rows' pairs cover the 32 banks once. (LD_KC's 36 words would put them 4 banks
// apart: a 2-way conflict.)
struct SwizzledPairs {
  __device__ __forceinline__ static int at(int r, int k) {
    return r * BK + ((((k >> 3) ^ r) & 3) << 3) + (k & 7);
  }
};

// The [row][k] tile of a features type S in shared memory.
template <typename S>
using KcTile = typename std::conditional<sizeof(S) == 2, Swizzled16, Padded<LD_KC>>::type;

// ---------------------------------------------------------------- element helpers
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// x rounded to T and back: the value a store of x as T keeps.
__device__ __forceinline__ float rounded(float x, float) { return x; }
__device__ __forceinline__ float rounded(float x, __nv_bfloat16) { return __bfloat162float(__float2bfloat16_rn(x)); }
__device__ __forceinline__ float rounded(float x, __half) { return __half2float(__float2half_rn(x)); }

__device__ __forceinline__ float4 load4(const float* p) {
  return __ldg(reinterpret_cast<const float4*>(p));
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
  float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 load4(const __half* p) {
  uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
  float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ void store1(float* p, float v) { *p = v; }
__device__ __forceinline__ void store1(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store1(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store2(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
// a and b rounded to a 2-byte type T and packed into one word, a in the low half.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  static_assert(sizeof(T) == 2, "2-byte values");
  uint32_t w;
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    w = *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __half2 h = __floats2half2_rn(a, b);
    w = *reinterpret_cast<const uint32_t*>(&h);
  }
  return w;
}
// The 2-byte pairs go out as one 32-bit word (as nvcc stores them; the emulator's
// profile sees the same width).
__device__ __forceinline__ void store2(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = pack2<__nv_bfloat16>(a, b);
}
__device__ __forceinline__ void store2(__half* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = pack2<__half>(a, b);
}

template <typename T>
struct IsFloat { static constexpr bool value = false; };
template <>
struct IsFloat<float> { static constexpr bool value = true; };

// ---------------------------------------------------------------- tensor-core helpers

// How an operand enters the tf32 products.
enum Tf32Mode : int {
  kExact = 0,  // already a tf32 value (from bf16 / fp16): one product
  kRound = 1,  // float32 rounded to tf32 (TF32 allowed): one product
  kSplit = 2,  // float32 as hi + lo (3xTF32): three products per pair
};

template <int MODE>
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  if (MODE == kSplit) {
    hi = to_tf32(x);
    lo = to_tf32(x - __uint_as_float(hi));
  } else if (MODE == kRound) {
    hi = to_tf32(x);
    lo = 0u;
  } else {
    hi = __float_as_uint(x);  // exactly representable (bf16 / fp16 value)
    lo = 0u;
  }
}

// The mode of a features operand of type T, and of the float32 residual D.
template <typename T, bool TF32>
constexpr int features_mode() {
  return IsFloat<T>::value ? (TF32 ? kRound : kSplit) : kExact;
}
template <bool TF32>
constexpr int residual_mode() {
  return TF32 ? kRound : kSplit;
}


// m16n8k16 fragments of 2-byte values through ldmatrix, E = 8 values (16 bytes) of k
// per matrix. KC: the tile is [row][k] (layout L); else [k][row], transposed on the way.
// The A fragment of rows r0 .. r0 + 15 and k0 .. k0 + 15.
template <bool KC, typename L, typename S>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const S* s, int r0, int k0, int lane) {
  constexpr int E = 8;
  static_assert(sizeof(S) == 2, "2-byte values");
  const int j = lane >> 3, i = lane & 7;  // lane: row i of matrix j
  const int r = r0 + 8 * (j & 1), k = k0 + E * (j >> 1);  // matrix j's first row and k
  if constexpr (KC)
    ldmatrix_x4<false>(a, s + L::at(r + i, k));
  else
    ldmatrix_x4<true>(a, s + L::at(k + i, r));
}
// The B fragments of columns n0 .. n0 + 7 (b0) and n0 + 8 .. n0 + 15 (b1), k0 .. k0 + 15.
template <bool KC, typename L, typename S>
__device__ __forceinline__ void load_b2(uint32_t (&b0)[2], uint32_t (&b1)[2], const S* s, int n0, int k0, int lane) {
  constexpr int E = 8;
  static_assert(sizeof(S) == 2, "2-byte values");
  const int j = lane >> 3, i = lane & 7;  // lane: row i of matrix j
  const int n = n0 + 8 * (j >> 1), k = k0 + E * (j & 1);  // matrix j's first column and k
  uint32_t r[4];
  if constexpr (KC)
    ldmatrix_x4<false>(r, s + L::at(n + i, k));
  else
    ldmatrix_x4<true>(r, s + L::at(k + i, n));
  b0[0] = r[0];
  b0[1] = r[1];
  b1[0] = r[2];
  b1[1] = r[3];
}

// One BK-deep stage of the warp's 32x32 product. A is (rows x k), B is (k x cols).
// A_KC: sA is [row][k]; else [k][row]. B_KC: sB is [col][k]; else [k][col]. LA_ / LB_:
// the tiles' layouts, if not the default (KcTile, NcTile): a resident D panel's.
template <bool A_KC, bool B_KC, int MODE_A, int MODE_B, typename LA_ = void, typename LB_ = void, typename SA,
          typename SB>
__device__ __forceinline__ void mma_stage(const SA* __restrict__ sA, const SB* __restrict__ sB,
                                          float (&acc)[2][4][4], int wm, int wn, int lane) {
  using LA = typename std::conditional<std::is_void<LA_>::value,
                                      typename std::conditional<A_KC, KcTile<SA>, NcTile>::type, LA_>::type;
  using LB = typename std::conditional<std::is_void<LB_>::value,
                                      typename std::conditional<B_KC, KcTile<SB>, NcTile>::type, LB_>::type;
  // Element (operand row, k) of A and (k, column) of B, whichever way the tile is stored.
  auto a_at = [&](int r, int k) { return to_float(sA[A_KC ? LA::at(r, k) : LA::at(k, r)]); };
  auto b_at = [&](int k, int n) { return to_float(sB[B_KC ? LB::at(n, k) : LB::at(k, n)]); };
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int kk = 0; kk < BK; kk += 8) {
    uint32_t ah[2][4], al[2][4], bh[4][2], bl[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int r = wm * 32 + mt * 16 + g;
      const float a[4] = {a_at(r, kk + t), a_at(r + 8, kk + t), a_at(r, kk + t + 4), a_at(r + 8, kk + t + 4)};
#pragma unroll
      for (int q = 0; q < 4; ++q) split_tf32<MODE_A>(a[q], ah[mt][q], al[mt][q]);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int n = wn * 32 + nt * 8 + g;
      const float b[2] = {b_at(kk + t, n), b_at(kk + t + 4, n)};
#pragma unroll
      for (int q = 0; q < 2; ++q) split_tf32<MODE_B>(b[q], bh[nt][q], bl[nt][q]);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        if (MODE_A == kSplit) mma_tf32(acc[mt][nt], al[mt], bh[nt]);
        if (MODE_B == kSplit) mma_tf32(acc[mt][nt], ah[mt], bl[nt]);
        mma_tf32(acc[mt][nt], ah[mt], bh[nt]);
      }
    }
  }
}

// One BK-deep stage of the warp's 32x32 product for bf16 / fp16 operands kept as they
// are in shared memory (the cp.async path), through mma.m16n8k16: half the tensor
// instructions of the tf32 path, the same exact products and fp32 accumulation, and
// every fragment through ldmatrix (transposed for [k][row] tiles). Layouts as in mma_stage.
template <bool A_KC, bool B_KC, typename S>
__device__ __forceinline__ void mma_stage_16(const S* __restrict__ sA, const S* __restrict__ sB,
                                             float (&acc)[2][4][4], int wm, int wn, int lane) {
  static_assert(sizeof(S) == 2, "2-byte operands only");
  constexpr bool BF16 = std::is_same<S, __nv_bfloat16>::value;
  using LA = typename std::conditional<A_KC, Swizzled16, NcTile>::type;
  using LB = typename std::conditional<B_KC, Swizzled16, NcTile>::type;
#pragma unroll
  for (int kk = 0; kk < BK; kk += 16) {
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) load_a<A_KC, LA>(a[mt], sA, wm * 32 + mt * 16, kk, lane);
#pragma unroll
    for (int nt = 0; nt < 4; nt += 2) load_b2<B_KC, LB>(b[nt], b[nt + 1], sB, wn * 32 + nt * 8, kk, lane);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) mma_16816<BF16>(acc[mt][nt], a[mt], b[nt]);
  }
}

// x = h + m + l in bf16, exactly: each part takes the next 8 significant bits of the
// float (24 in all); the lower index of each returned pair is x, the higher y.
__device__ __forceinline__ void split3_bf16(float x, float y, uint32_t (&parts)[3]) {
#pragma unroll
  for (int q = 0; q < 3; ++q) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);  // one cvt.rn.bf16x2.f32, x low
    parts[q] = *reinterpret_cast<const uint32_t*>(&h);
    const float2 back = __bfloat1622float2(h);
    x -= back.x;
    y -= back.y;
  }
}

// One BK-deep stage of the backward's product of the fp32 residual D and bf16 features
// kept as they are in shared memory (the cp.async path), through mma.m16n8k16 bf16:
// D enters as its three exact bf16 parts, so 3 products per 16 of k where the tf32
// route takes 2 x 2 of 8 (and keeps 21 of D's 24 bits). D is [row][k] in both
// layouts, in layout LD (SwizzledPairs for a stage's tile, Padded for a resident panel).
// Standard: A = D [i][j], B = F [j][m] ([k][n]). Channels-last: A = F_cl [m][j]
// ([row][k]), B = D [i][j] read as [n][k].
template <bool CL, typename LD>
__device__ __forceinline__ void mma_stage_residual_bf16(const float* __restrict__ sD,
                                                        const __nv_bfloat16* __restrict__ sF,
                                                        float (&acc)[2][4][4], int wm, int wn, int lane) {
  using LF = typename std::conditional<CL, Swizzled16, NcTile>::type;
  auto d_parts = [&](int r, int k, uint32_t (&parts)[3]) {
    const float2 v = *reinterpret_cast<const float2*>(sD + LD::at(r, k));
    split3_bf16(v.x, v.y, parts);
  };
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int kk = 0; kk < BK; kk += 16) {
    const int k = kk + 2 * t;
    uint32_t p[4][3];  // D pairs as parts: p[register][part]
    if constexpr (!CL) {
      uint32_t a[3][2][4], b[4][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int r = wm * 32 + mt * 16 + g;
        d_parts(r, k, p[0]);
        d_parts(r + 8, k, p[1]);
        d_parts(r, k + 8, p[2]);
        d_parts(r + 8, k + 8, p[3]);
#pragma unroll
        for (int q = 0; q < 3; ++q)
#pragma unroll
          for (int reg = 0; reg < 4; ++reg) a[q][mt][reg] = p[reg][q];
      }
#pragma unroll
      for (int nt = 0; nt < 4; nt += 2) load_b2<false, LF>(b[nt], b[nt + 1], sF, wn * 32 + nt * 8, kk, lane);
#pragma unroll
      for (int q = 0; q < 3; ++q)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) mma_16816<true>(acc[mt][nt], a[q][mt], b[nt]);
    } else {
      uint32_t a[2][4], b[3][4][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) load_a<true, LF>(a[mt], sF, wm * 32 + mt * 16, kk, lane);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int n = wn * 32 + nt * 8 + g;
        d_parts(n, k, p[0]);
        d_parts(n, k + 8, p[1]);
#pragma unroll
        for (int q = 0; q < 3; ++q) {
          b[q][nt][0] = p[0][q];
          b[q][nt][1] = p[1][q];
        }
      }
#pragma unroll
      for (int q = 0; q < 3; ++q)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) mma_16816<true>(acc[mt][nt], a[mt], b[q][nt]);
    }
  }
}

// The tensor cores' fp32 accumulation may round toward zero; long reductions flush
// the stage accumulator into a round-to-nearest fp32 total after every stage, so
// each mma accumulator only ever sums one stage (32 of k).
__device__ __forceinline__ void flush_stage(float (&total)[2][4][4], float (&acc)[2][4][4]) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        total[i][j][q] += acc[i][j][q];
        acc[i][j][q] = 0.f;
      }
}

__device__ __forceinline__ void zero(float (&a)[2][4][4]) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) a[i][j][q] = 0.f;
}

}  // namespace kernels
}  // namespace nst_fast
