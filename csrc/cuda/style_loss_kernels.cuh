// Device code of the nst_fast style-loss ops (see ../style_loss.h for the contract) and
// the launch arithmetic the host side and the CPU emulator (tests/cuda_emulator) share.
//
// Both kernels are 64x64-output-tile GEMMs on the tensor cores through
// mma.sync.m16n8k8 tf32 with fp32 accumulation, 128 threads (2x2 warps of 32x32),
// a 32-deep reduction stage. Features whose rows are 16-byte aligned and a multiple
// of 16 bytes long stream through a 4-stage cp.async pipeline (bf16 / fp16 kept as
// they are in shared memory); other layouts use register-staged double buffering
// with bounds checks (NST_FAST_CUDA_ASYNC=0 forces the latter).
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
//
// Forward (gram / style_loss_forward): grid = (upper-triangle tile, split, batch).
// Each block reduces its slice of M for one 64x64 tile with ti <= tj and adds the
// partial into a zeroed fp32 accumulator with red.global.add; the last block to
// finish a tile (per-tile arrival counter) forms D = G - A for the tile, writes it
// into both triangles of the residual and the tile's share of sum(D^2); the last
// tile to finish sums the tile shares (fixed order, in double) into the loss.
// One memset + one kernel per call. Tiles vary fastest in the grid so blocks that
// share a slice of F run together; NST_FAST_SPLITK_PER_SM (default 3) sets the
// split-K target in blocks per SM. The mma accumulators are flushed into a
// round-to-nearest fp32 total after every stage (tensor-core accumulation may truncate).
//
// Backward: dF = (4 * scale * grad_loss) * D F in one kernel, grad_loss read on the
// device. Channels-last features (memory (B, M, C)) are computed as (F^T D)^T, which
// keeps the output in the input's layout; the same trick as the CPU kernel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
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

// Row strides (elements) of the two layouts for a shared-memory element type S. The
// cp.async path keeps bf16 / fp16 features as they are; two neighbours then share a
// 4-byte word, so the [row][k] stride grows to 40 (20 words: the 8 rows of a fragment
// read land 20 words apart, on distinct bank pairs); [k][row] keeps 72 (36 words: the
// 4 k rows land 4 banks apart). Every row starts on 16 bytes, as cp.async needs.
template <typename S>
constexpr int ld_kc() { return sizeof(S) == 4 ? LD_KC : BK + 8; }
static_assert(TILE * (BK + 8) * 2 <= SMEM_TILE * 4 && BK * LD_NC * 2 <= SMEM_TILE * 4,
              "2-byte tiles fit the float buffers");

// ---------------------------------------------------------------- element helpers
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

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
__device__ __forceinline__ void store2(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ void store2(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
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
// per matrix. KC: the tile is [row][k]; else [k][row], transposed on the way.
// The A fragment of rows r0 .. r0 + 15 and k0 .. k0 + 15.
template <bool KC, typename S>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const S* s, int ld, int r0, int k0, int lane) {
  constexpr int E = 8;
  static_assert(sizeof(S) == 2, "2-byte values");
  const int j = lane >> 3, i = lane & 7;  // matrix j: rows + 8 (j & 1), k + E (j >> 1)
  if constexpr (KC)
    ldmatrix_x4<false>(a, s + (r0 + 8 * (j & 1) + i) * ld + k0 + E * (j >> 1));
  else
    ldmatrix_x4<true>(a, s + (k0 + E * (j >> 1) + i) * ld + r0 + 8 * (j & 1));
}
// The B fragments of columns n0 .. n0 + 7 (b0) and n0 + 8 .. n0 + 15 (b1), k0 .. k0 + 15.
template <bool KC, typename S>
__device__ __forceinline__ void load_b2(uint32_t (&b0)[2], uint32_t (&b1)[2], const S* s, int ld, int n0, int k0,
                                        int lane) {
  constexpr int E = 8;
  static_assert(sizeof(S) == 2, "2-byte values");
  const int j = lane >> 3, i = lane & 7;  // matrix j: columns + 8 (j >> 1), k + E (j & 1)
  uint32_t r[4];
  if constexpr (KC)
    ldmatrix_x4<false>(r, s + (n0 + 8 * (j >> 1) + i) * ld + k0 + E * (j & 1));
  else
    ldmatrix_x4<true>(r, s + (k0 + E * (j & 1) + i) * ld + n0 + 8 * (j >> 1));
  b0[0] = r[0];
  b0[1] = r[1];
  b1[0] = r[2];
  b1[1] = r[3];
}

// One BK-deep stage of the warp's 32x32 product. A is (rows x k), B is (k x cols).
// A_KC: sA is [row][k] (ld_kc); else [k][row] (LD_NC). B_KC: sB is [col][k]; else [k][col].
template <bool A_KC, bool B_KC, int MODE_A, int MODE_B, typename SA, typename SB>
__device__ __forceinline__ void mma_stage(const SA* __restrict__ sA, const SB* __restrict__ sB,
                                          float (&acc)[2][4][4], int wm, int wn, int lane) {
  constexpr int LDA = A_KC ? ld_kc<SA>() : LD_NC;
  constexpr int LDB = B_KC ? ld_kc<SB>() : LD_NC;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int kk = 0; kk < BK; kk += 8) {
    uint32_t ah[2][4], al[2][4], bh[4][2], bl[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int r = wm * 32 + mt * 16 + g;
      float a[4];
      if (A_KC) {
        a[0] = to_float(sA[r * LDA + kk + t]);
        a[1] = to_float(sA[(r + 8) * LDA + kk + t]);
        a[2] = to_float(sA[r * LDA + kk + t + 4]);
        a[3] = to_float(sA[(r + 8) * LDA + kk + t + 4]);
      } else {
        a[0] = to_float(sA[(kk + t) * LDA + r]);
        a[1] = to_float(sA[(kk + t) * LDA + r + 8]);
        a[2] = to_float(sA[(kk + t + 4) * LDA + r]);
        a[3] = to_float(sA[(kk + t + 4) * LDA + r + 8]);
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) split_tf32<MODE_A>(a[q], ah[mt][q], al[mt][q]);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int n = wn * 32 + nt * 8 + g;
      float b[2];
      if (B_KC) {
        b[0] = to_float(sB[n * LDB + kk + t]);
        b[1] = to_float(sB[n * LDB + kk + t + 4]);
      } else {
        b[0] = to_float(sB[(kk + t) * LDB + n]);
        b[1] = to_float(sB[(kk + t + 4) * LDB + n]);
      }
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
  constexpr int LDA = A_KC ? ld_kc<S>() : LD_NC;
  constexpr int LDB = B_KC ? ld_kc<S>() : LD_NC;
#pragma unroll
  for (int kk = 0; kk < BK; kk += 16) {
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) load_a<A_KC>(a[mt], sA, LDA, wm * 32 + mt * 16, kk, lane);
#pragma unroll
    for (int nt = 0; nt < 4; nt += 2) load_b2<B_KC>(b[nt], b[nt + 1], sB, LDB, wn * 32 + nt * 8, kk, lane);
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
// layouts (LD_KC). Standard: A = D [i][j], B = F [j][m] ([k][n], LD_NC). Channels-last:
// A = F_cl [m][j] ([row][k]), B = D [i][j] read as [n][k].
template <bool CL>
__device__ __forceinline__ void mma_stage_residual_bf16(const float* __restrict__ sD,
                                                        const __nv_bfloat16* __restrict__ sF,
                                                        float (&acc)[2][4][4], int wm, int wn, int lane) {
  constexpr int LDF = CL ? ld_kc<__nv_bfloat16>() : LD_NC;
  auto d_parts = [&](int r, int k, uint32_t (&parts)[3]) {
    const float2 v = *reinterpret_cast<const float2*>(sD + r * LD_KC + k);
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
      for (int nt = 0; nt < 4; nt += 2) load_b2<false>(b[nt], b[nt + 1], sF, LDF, wn * 32 + nt * 8, kk, lane);
#pragma unroll
      for (int q = 0; q < 3; ++q)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) mma_16816<true>(acc[mt][nt], a[q][mt], b[nt]);
    } else {
      uint32_t a[2][4], b[3][4][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) load_a<true>(a[mt], sF, LDF, wm * 32 + mt * 16, kk, lane);
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
// each mma accumulator only ever sums one stage (4 k-steps).
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

// Register-staged loader of a TR x TC tile of a row-major matrix (unit column
// stride, row stride ld) into shared memory [TR][lds], as float, zero-filled
// outside [0, rows) x [0, cols). vec: 4-element vector loads are legal (aligned
// base, ld % 4 == 0, cols % 4 == 0, c0 % 4 == 0).
template <typename T, int TR, int TC>
struct TileLoader {
  static constexpr int VPR = TC / 4;
  static constexpr int NV = TR * TC / 4 / THREADS;
  static_assert(NV * THREADS * 4 == TR * TC, "tile must split evenly over the block");
  float4 r[NV];

  __device__ __forceinline__ void load(const T* __restrict__ base, long long ld, int rows, int cols,
                                       int r0, int c0, bool vec) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int v = threadIdx.x + i * THREADS;
      const int gr = r0 + v / VPR;
      const int gc = c0 + (v % VPR) * 4;
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if (gr < rows && gc < cols) {
        const T* p = base + (long long)gr * ld + gc;
        if (vec) {
          x = load4(p);
        } else {
          x.x = to_float(p[0]);
          if (gc + 1 < cols) x.y = to_float(p[1]);
          if (gc + 2 < cols) x.z = to_float(p[2]);
          if (gc + 3 < cols) x.w = to_float(p[3]);
        }
      }
      r[i] = x;
    }
  }

  __device__ __forceinline__ void store(float* __restrict__ s, int lds) const {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int v = threadIdx.x + i * THREADS;
      *reinterpret_cast<float4*>(s + (v / VPR) * lds + (v % VPR) * 4) = r[i];
    }
  }
};

// cp.async path (16-byte aligned rows whose length is a multiple of 16 bytes): the
// tiles in shared memory in the features' own type, filled asynchronously
// NSTAGE - 1 stages ahead, zero-filled outside the matrix.
constexpr int NSTAGE = 4;

template <int TR, int TC, typename T>
__device__ __forceinline__ void async_tile(T* __restrict__ s, int lds, const T* __restrict__ base,
                                           long long ld, int rows, int cols, int r0, int c0) {
  constexpr int E = 16 / sizeof(T);  // elements per copy
  constexpr int VPR = TC / E;
  constexpr int NV = TR * TC / E / THREADS;
  static_assert(NV * THREADS * E == TR * TC, "tile must split evenly over the block");
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int v = threadIdx.x + i * THREADS;
    const int rr = v / VPR, cc = (v % VPR) * E;
    const int gr = r0 + rr, gc = c0 + cc;
    const bool p = gr < rows && gc < cols;
    cp_async16(s + rr * lds + cc, p ? base + (long long)gr * ld + gc : base, p);
  }
}

__device__ __forceinline__ void red_add2(float* p, float a, float b, bool pair_ok, bool second_ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (pair_ok) {
    atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
    return;
  }
#endif
  atomicAdd(p, a);
  if (second_ok) atomicAdd(p + 1, b);
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < THREADS / 32; ++w) s += scratch[w];
  }
  return s;  // valid in thread 0
}

// The reduction's main loop over nk stages of BK, the first at k_begin. cp.async:
// issue(buf, k) starts the copies of the stage at k into buffer buf, NSTAGE - 1
// stages ahead. Register-staged: load(k) into registers, store(buf) into shared
// memory, double-buffered. compute(buf) consumes the stage in buf.
template <bool ASYNC, typename Issue, typename Load, typename Store, typename Compute>
__device__ __forceinline__ void reduce(int nk, int k_begin, Issue& issue, Load& load, Store& store, Compute& compute) {
  if constexpr (ASYNC) {
#pragma unroll
    for (int st = 0; st < NSTAGE - 1; ++st) {
      if (st < nk) issue(st, k_begin + st * BK);
      cp_async_commit();
    }
    for (int kt = 0; kt < nk; ++kt) {
      cp_async_wait<NSTAGE - 2>();
      __syncthreads();  // stage kt landed for all threads; stage kt - 1 fully consumed
      const int nxt = kt + NSTAGE - 1;
      if (nxt < nk) issue(nxt % NSTAGE, k_begin + nxt * BK);
      cp_async_commit();
      compute(kt % NSTAGE);
    }
    cp_async_wait<0>();
  } else {
    if (nk > 0) {
      load(k_begin);
      store(0);
    }
    __syncthreads();
    for (int kt = 0; kt < nk; ++kt) {
      const int buf = kt & 1;
      if (kt + 1 < nk) load(k_begin + (kt + 1) * BK);
      compute(buf);
      if (kt + 1 < nk) store(buf ^ 1);
      __syncthreads();
    }
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

// ---------------------------------------------------------------- forward kernel
// F: standard -> rows C, cols M, row stride ld; channels-last (CL) -> rows M, cols C.
// target == nullptr: plain Gram (out = G, no loss).
template <typename T, bool CL, bool ASYNC, bool TF32>
__global__ void __launch_bounds__(THREADS)
    gram_splitk_kernel(const T* __restrict__ F, long long sFb, long long ld, int C, int M, int ntile,
                       int chunk, bool vec, float* __restrict__ gacc, int* __restrict__ tile_cnt,
                       int* __restrict__ done_cnt, float* __restrict__ loss_part,
                       const float* __restrict__ A, long long sAb, long long sA1, long long sA2,
                       float* __restrict__ out, float* __restrict__ loss, float scale) {
  NST_DYNAMIC_SMEM(dsmem);  // [stages][2 operands][SMEM_TILE]
  auto sbuf = [&](int buf, int op) { return dsmem + (buf * 2 + op) * SMEM_TILE; };
  __shared__ float scratch[THREADS / 32];
  __shared__ int s_last;

  // Tiles vary fastest: blocks resident together read the same slice of F (L2 hits).
  const int T_tiles = gridDim.x, S = gridDim.y, B = gridDim.z;
  const int tile = blockIdx.x, s = blockIdx.y, b = blockIdx.z;
  int idx = tile, ti = 0;
  while (idx >= ntile - ti) {
    idx -= ntile - ti;
    ++ti;
  }
  const int tj = ti + idx;
  const bool diag = ti == tj;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 1, wn = warp & 1;
  const bool active = !(diag && wm > wn);  // strictly-lower quadrant of a diagonal tile

  const long long C2 = (long long)C * C;
  const T* Fb = F + (long long)b * sFb;
  const int k0 = s * chunk;
  const int k1 = min(M, k0 + chunk);
  const int nk = k1 > k0 ? (k1 - k0 + BK - 1) / BK : 0;

  float acc[2][4][4], stage[2][4][4];
  zero(acc);
  zero(stage);

  // Shared-memory features: as they are on the cp.async path, as float on the other.
  using SF = typename std::conditional<ASYNC, T, float>::type;
  auto fbuf = [&](int buf, int op) { return reinterpret_cast<SF*>(sbuf(buf, op)); };
  constexpr int TR = CL ? BK : TILE;
  constexpr int TC = CL ? TILE : BK;
  constexpr int LDS = CL ? LD_NC : ld_kc<SF>();
  TileLoader<T, TR, TC> la, lb;
  auto load = [&](int kb) {
    if (CL) {
      la.load(Fb, ld, k1, C, kb, ti * TILE, vec);
      if (!diag) lb.load(Fb, ld, k1, C, kb, tj * TILE, vec);
    } else {
      la.load(Fb, ld, C, k1, ti * TILE, kb, vec);
      if (!diag) lb.load(Fb, ld, C, k1, tj * TILE, kb, vec);
    }
  };
  auto store = [&](int buf) {
    la.store(sbuf(buf, 0), LDS);
    if (!diag) lb.store(sbuf(buf, 1), LDS);
  };
  auto compute = [&](int buf) {
    if (active) {
      const SF* sA = fbuf(buf, 0);
      const SF* sB = diag ? fbuf(buf, 0) : fbuf(buf, 1);
      if constexpr (ASYNC && sizeof(T) == 2)
        mma_stage_16<!CL, !CL>(sA, sB, stage, wm, wn, lane);
      else
        mma_stage<!CL, !CL, features_mode<T, TF32>(), features_mode<T, TF32>()>(sA, sB, stage, wm, wn, lane);
      flush_stage(acc, stage);
    }
  };

  auto issue = [&](int buf, auto kb) {  // generic: compiled only on the cp.async path
    if (CL) {
      async_tile<TR, TC>(fbuf(buf, 0), LDS, Fb, ld, k1, C, kb, ti * TILE);
      if (!diag) async_tile<TR, TC>(fbuf(buf, 1), LDS, Fb, ld, k1, C, kb, tj * TILE);
    } else {
      async_tile<TR, TC>(fbuf(buf, 0), LDS, Fb, ld, C, k1, ti * TILE, kb);
      if (!diag) async_tile<TR, TC>(fbuf(buf, 1), LDS, Fb, ld, C, k1, tj * TILE, kb);
    }
  };
  reduce<ASYNC>(nk, k0, issue, load, store, compute);

  // Partial tile -> fp32 accumulator (upper triangle of G only).
  if (active) {
    const int g = lane >> 2, t = lane & 3;
    const bool even = (C & 1) == 0;
    float* Gb = gacc + (long long)b * C2;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int gi = ti * TILE + wm * 32 + mt * 16 + g + h * 8;
        if (gi >= C) continue;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int gj = tj * TILE + wn * 32 + nt * 8 + 2 * t;
          if (gj >= C || gj + 1 < gi) continue;
          red_add2(Gb + (long long)gi * C + gj, acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1], even,
                   gj + 1 < C);
        }
      }
    }
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(&tile_cnt[b * T_tiles + tile], 1) == S - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();

  // Last block of this tile: D = G - A into both triangles, and sum(D^2).
  const float* Gb = gacc + (long long)b * C2;
  float* Ob = out + (long long)b * C2;
  // All loads first (32 per thread, independent), then the arithmetic and stores:
  // one L2 round trip instead of one per element.
  constexpr int PER = TILE * TILE / THREADS;
  const int col = threadIdx.x % TILE, row0 = threadIdx.x / TILE;
  const int gj = tj * TILE + col;
  float gv[PER], av[PER];
#pragma unroll
  for (int r = 0; r < PER; ++r) {
    const int gi = ti * TILE + row0 + r * (THREADS / TILE);
    const bool ok = gi < C && gj < C && gi <= gj;
    gv[r] = ok ? __ldcg(Gb + (long long)gi * C + gj) : 0.f;
    av[r] = (ok && A != nullptr) ? A[(long long)b * sAb + gi * sA1 + gj * sA2] : 0.f;
  }
  float local = 0.f;
#pragma unroll
  for (int r = 0; r < PER; ++r) {
    const int gi = ti * TILE + row0 + r * (THREADS / TILE);
    if (gi < C && gj < C && gi <= gj) {
      const float d = gv[r] - av[r];
      Ob[(long long)gi * C + gj] = d;
      Ob[(long long)gj * C + gi] = d;
      local += (gi == gj ? 1.f : 2.f) * d * d;
    }
  }
  if (A == nullptr) return;
  const float tile_sum = block_sum(local, scratch);
  if (threadIdx.x == 0) {
    loss_part[b * T_tiles + tile] = tile_sum;
    __threadfence();
    s_last = atomicAdd(done_cnt, 1) == B * T_tiles - 1;
  }
  __syncthreads();
  if (!s_last || threadIdx.x >= 32) return;
  __threadfence();
  double sum = 0.0;
  for (int i = threadIdx.x; i < B * T_tiles; i += 32) sum += (double)__ldcg(loss_part + i);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (threadIdx.x == 0) *loss = (float)(sum * (double)scale);
}

// ---------------------------------------------------------------- backward kernel
// Standard: out tile (i, m) = sum_j D[i][j] F[j][m]; A = D [i][j] (k-contiguous),
//           B = F [j][m] (n-contiguous).
// CL:       out tile (m, i) = sum_j F^T[m][j] D[j][i]; A = F_cl [m][j], B = D [i][j]
//           read as [n][k] (D is symmetric).
// out element (row r, col c) of the tile orientation lives at
// out + b * sOb + r * oRow + c * oCol.
template <typename T, bool CL, bool ASYNC, bool TF32>
__global__ void __launch_bounds__(THREADS)
    style_bwd_kernel(const float* __restrict__ D, bool vecD, const T* __restrict__ F, long long sFb,
                     long long ld, bool vecF, int C, int M, T* __restrict__ out, long long sOb,
                     long long oRow, long long oCol, bool vec_out,
                     const float* __restrict__ grad_loss, float coef) {
  NST_DYNAMIC_SMEM(dsmem);  // [stages][2 operands][SMEM_TILE]
  auto sbuf = [&](int buf, int op) { return dsmem + (buf * 2 + op) * SMEM_TILE; };
  // Channel tiles vary fastest: the blocks that read the same columns of F run together.
  const int b = blockIdx.z;
  const int n_i = (C + TILE - 1) / TILE;
  const int m0 = (blockIdx.x / n_i) * TILE, i0 = (blockIdx.x % n_i) * TILE;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 1, wn = warp & 1;
  const float* Db = D + (long long)b * C * C;
  const T* Fb = F + (long long)b * sFb;
  const int nk = (C + BK - 1) / BK;

  float acc[2][4][4], stage[2][4][4];
  zero(acc);
  zero(stage);

  // Loader shapes: D tile is always (64 rows of i) x (32 of j) in [row][k].
  TileLoader<float, TILE, BK> ld_d;
  using FLoader = TileLoader<T, CL ? TILE : BK, CL ? BK : TILE>;
  FLoader ld_f;
  using SF = typename std::conditional<ASYNC, T, float>::type;  // as in the forward
  auto fbuf = [&](int buf, int op) { return reinterpret_cast<SF*>(sbuf(buf, op)); };
  constexpr int LDS_F = CL ? ld_kc<SF>() : LD_NC;
  auto load = [&](int j0) {
    ld_d.load(Db, C, C, C, i0, j0, vecD);
    if (CL)
      ld_f.load(Fb, ld, M, C, m0, j0, vecF);
    else
      ld_f.load(Fb, ld, C, M, j0, m0, vecF);
  };
  // sbuf(buf, 0) = A operand, sbuf(buf, 1) = B operand.
  auto store = [&](int buf) {
    if (CL) {
      ld_f.store(sbuf(buf, 0), LDS_F);
      ld_d.store(sbuf(buf, 1), LD_KC);
    } else {
      ld_d.store(sbuf(buf, 0), LD_KC);
      ld_f.store(sbuf(buf, 1), LDS_F);
    }
  };
  auto compute = [&](int buf) {
    if constexpr (ASYNC && std::is_same<T, __nv_bfloat16>::value)
      mma_stage_residual_bf16<CL>(sbuf(buf, CL ? 1 : 0), fbuf(buf, CL ? 0 : 1), stage, wm, wn, lane);
    else if (CL)
      mma_stage<true, true, features_mode<T, TF32>(), residual_mode<TF32>()>(fbuf(buf, 0), sbuf(buf, 1), stage,
                                                                            wm, wn, lane);
    else
      mma_stage<true, false, residual_mode<TF32>(), features_mode<T, TF32>()>(sbuf(buf, 0), fbuf(buf, 1), stage,
                                                                             wm, wn, lane);
    flush_stage(acc, stage);
  };

  auto issue = [&](int buf, auto j0) {  // generic: compiled only on the cp.async path
    if (CL) {
      async_tile<TILE, BK>(fbuf(buf, 0), LDS_F, Fb, ld, M, C, m0, j0);
      async_tile<TILE, BK>(sbuf(buf, 1), LD_KC, Db, C, C, C, i0, j0);
    } else {
      async_tile<TILE, BK>(sbuf(buf, 0), LD_KC, Db, C, C, C, i0, j0);
      async_tile<BK, TILE>(fbuf(buf, 1), LDS_F, Fb, ld, C, M, j0, m0);
    }
  };
  reduce<ASYNC>(nk, 0, issue, load, store, compute);

  const float alpha = coef * __ldg(grad_loss);
  const int rows = CL ? M : C, cols = CL ? C : M;
  const int r0 = CL ? m0 : i0, c0 = CL ? i0 : m0;
  const int g = lane >> 2, t = lane & 3;
  T* Ob = out + (long long)b * sOb;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r0 + wm * 32 + mt * 16 + g + h * 8;
      if (r >= rows) continue;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int c = c0 + wn * 32 + nt * 8 + 2 * t;
        if (c >= cols) continue;
        const float v0 = alpha * acc[mt][nt][2 * h], v1 = alpha * acc[mt][nt][2 * h + 1];
        T* p = Ob + (long long)r * oRow + (long long)c * oCol;
        if (vec_out) {
          store2(p, v0, v1);
        } else {
          store1(p, v0);
          if (c + 1 < cols) store1(p + oCol, v1);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- launch planning
constexpr int SMEM_SYNC_BYTES = 2 * 2 * SMEM_TILE * (int)sizeof(float);
constexpr int SMEM_ASYNC_BYTES = NSTAGE * 2 * SMEM_TILE * (int)sizeof(float);

// Features (B, C, M) seen as one row-major matrix per batch item.
struct FeatureLayout {
  bool dense;        // false: neither M nor C has unit stride (the caller copies)
  bool cl;           // channels-last: rows = M, cols = C
  long long sb, ld;  // batch stride, row stride (elements)
};

inline FeatureLayout feature_layout(long long s0, long long s1, long long s2) {
  if (s2 == 1) return {true, false, s0, s1};
  if (s1 == 1) return {true, true, s0, s2};
  return {false, false, 0, 0};
}

inline bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// 4-element vector loads of the register-staged path are legal.
inline bool vec_ok(const void* p, size_t elem, long long sb, long long ld, long long cols, long long B) {
  return aligned(p, 4 * elem) && ld % 4 == 0 && (B == 1 || sb % 4 == 0) && cols % 4 == 0;
}

// The cp.async pipeline copies 16 bytes at a time: the base, the row and batch
// strides and the row length must all be multiples of 16 bytes.
inline bool async_layout_ok(const void* p, size_t elem, long long sb, long long ld, long long cols, long long B) {
  const long long e = 16 / (long long)elem;
  return aligned(p, 16) && ld % e == 0 && (B == 1 || sb % e == 0) && cols % e == 0;
}

// Forward grid: upper-triangle tiles x splits of M x batch.
struct GramPlan {
  int ntile;          // channel tiles per side
  long long tiles;    // upper-triangle tiles
  long long splits;   // slices of M
  long long chunk;    // columns of M per slice (a multiple of BK)
};

inline GramPlan plan_gram(long long B, long long C, long long M, long long target_blocks) {
  GramPlan p;
  p.ntile = (int)((C + TILE - 1) / TILE);
  p.tiles = (long long)p.ntile * (p.ntile + 1) / 2;
  long long S = (target_blocks + B * p.tiles - 1) / (B * p.tiles);
  if (S < 1) S = 1;
  long long chunk = (M + S - 1) / S;
  chunk = (chunk + BK - 1) / BK * BK;
  if (chunk < 2 * BK) chunk = 2 * BK;
  p.chunk = chunk;
  p.splits = (M + chunk - 1) / chunk;
  if (p.splits < 1) p.splits = 1;
  return p;
}

// Backward output in the kernel's tile orientation: (i, m) standard, (m, i) channels-last.
struct BackwardOut {
  long long sb, row, col;  // element strides of batch, tile row, tile column
  bool vec;                // pairs of neighbours along a tile row are stored together
};

inline BackwardOut backward_out(const void* out, size_t elem, long long s0, long long s1, long long s2, bool cl,
                                long long C, long long M, long long B) {
  BackwardOut o{s0, cl ? s2 : s1, cl ? s1 : s2, false};
  const long long cols = cl ? C : M;
  o.vec = o.col == 1 && aligned(out, 2 * elem) && o.row % 2 == 0 && (B == 1 || o.sb % 2 == 0) && cols % 2 == 0;
  return o;
}

// Calls launch(kernel, async) with the instantiation for the layout (channels-last or
// not), the pipeline (cp.async or register-staged) and the precision: float32 features
// take TF32 products where tf32 is set. pick(cl, async, tf32) names the kernel, given
// std::true_type / std::false_type.
template <typename T, typename Pick, typename Launch>
void with_kernel(Pick pick, bool cl, bool async, bool tf32, Launch&& launch) {
  using Yes = std::true_type;
  using No = std::false_type;
  auto by_precision = [&](auto layout, auto pipeline) {
    if constexpr (std::is_same<T, float>::value) {
      if (tf32) {
        launch(pick(layout, pipeline, Yes{}), decltype(pipeline)::value);
        return;
      }
    }
    launch(pick(layout, pipeline, No{}), decltype(pipeline)::value);
  };
  auto by_pipeline = [&](auto layout) {
    if (async)
      by_precision(layout, Yes{});
    else
      by_precision(layout, No{});
  };
  if (cl)
    by_pipeline(Yes{});
  else
    by_pipeline(No{});
}

}  // namespace kernels
}  // namespace nst_fast
