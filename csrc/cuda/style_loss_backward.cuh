// The backward kernels of the nst_fast style-loss ops, style_loss_backward and
// style_loss_relu_backward (nst_fast/style_loss.h has the contract; style_loss_plan.cuh
// picks the kernel and its grid, plan_backward).
//
// Backward: dF = (4 * scale * grad_loss) * D F in one kernel, grad_loss read on the
// device. Channels-last features (memory (B, M, C)) are computed as (F^T D)^T, which
// keeps the output in the input's layout; the same trick as the CPU kernel.
#pragma once

#include <cstdint>
#include <type_traits>

#include "ieee.cuh"
#include "style_loss_pipeline.cuh"

namespace nst_fast {
namespace kernels {

// Lanes 4g .. 4g + 3 (t = 0 .. 3) each hold word nt of a row's four words nt = 0 .. 3
// (columns 8 nt + 2t, + 1: the mma accumulator layout). Afterwards lane t holds the
// words of columns 8t .. 8t + 7: word j from lane j's word t. Three shuffles; the
// selects keep every index static, so the words stay in registers.
__device__ __forceinline__ void transpose_row_words(const uint32_t (&in)[4], uint32_t (&out)[4], int t) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int i = t ^ k;  // the word lane t ^ k wants from this lane, and the slot its reply fills
    const uint32_t send = i == 0 ? in[0] : i == 1 ? in[1] : i == 2 ? in[2] : in[3];
    const uint32_t got = k == 0 ? send : __shfl_xor_sync(0xffffffffu, send, k);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (j == i) out[j] = got;
  }
}

// What style_loss_relu_backward adds to the backward's epilogue, at out's offsets in
// the same buffers' layout: the gradient from the layers above (add) and the ReLU's
// output, whose non-positive elements zero the result (relu). Null: not there.
template <typename T>
struct ReluGrad {
  const T* add;
  const T* relu;
  __device__ __forceinline__ bool any() const { return add != nullptr || relu != nullptr; }
  // v = alpha * acc at offset off -> the stored value, rounded as the separate ops round
  // it: dF to T, then dF + add to T; then masked as threshold_backward masks.
  __device__ __forceinline__ float finish(float v, long long off) const {
    v = rounded(v, T());
    if (add != nullptr) v = rounded(ieee::add(v, to_float(add[off])), T());
    if (relu != nullptr && ieee::at_most_zero(to_float(relu[off]))) v = 0.f;
    return v;
  }
  __device__ __forceinline__ ReluGrad at_batch(long long offset) const {
    return {add ? add + offset : nullptr, relu ? relu + offset : nullptr};
  }
};

// The backward's epilogue: alpha * acc (through e) into a tile of out with rows r0 ..
// and columns c0 .. in the tile orientation; element (r, c) at out + r * oRow + c * oCol.
// vec: elements stored together along a tile row (BackwardOut::vec): 1, 2, or 8, where
// the four lanes of a row trade their 2-byte pairs so that each stores 16 bytes and a
// warp's stores fill whole 32-byte sectors (pairs cover half a sector per row).
template <typename T>
__device__ __forceinline__ void store_tile(const float (&acc)[2][4][4], float alpha, T* __restrict__ out, int rows,
                                           int cols, int r0, int c0, long long oRow, long long oCol, int vec,
                                           const ReluGrad<T>& e, int wm, int wn, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const bool fused = e.any();
  if constexpr (sizeof(T) == 2) {
    if (vec == 8) {  // the same for the whole grid: the shuffles see every lane
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = r0 + wm * 32 + mt * 16 + g + h * 8;
          uint32_t pairs[4], row[4];
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            float v0 = alpha * acc[mt][nt][2 * h], v1 = alpha * acc[mt][nt][2 * h + 1];
            const int c = c0 + wn * 32 + nt * 8 + 2 * t;
            if (fused && r < rows && c < cols) {  // cols % 8 == 0: the pair is inside; oCol == 1
              const long long off = (long long)r * oRow + c;
              v0 = e.finish(v0, off);
              v1 = e.finish(v1, off + 1);
            }
            pairs[nt] = pack2<T>(v0, v1);
          }
          transpose_row_words(pairs, row, t);
          const int c = c0 + wn * 32 + 8 * t;
          if (r < rows && c < cols)  // all 8 columns are inside
            *reinterpret_cast<uint4*>(out + (long long)r * oRow + c) = make_uint4(row[0], row[1], row[2], row[3]);
        }
      }
      return;
    }
  }
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
        float v0 = alpha * acc[mt][nt][2 * h], v1 = alpha * acc[mt][nt][2 * h + 1];
        const long long off = (long long)r * oRow + (long long)c * oCol;
        if (fused) {
          v0 = e.finish(v0, off);
          if (c + 1 < cols) v1 = e.finish(v1, off + oCol);
        }
        T* p = out + off;
        if (vec > 1) {
          store2(p, v0, v1);
        } else {
          store1(p, v0);
          if (c + 1 < cols) store1(p + oCol, v1);
        }
      }
    }
  }
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
                     long long oRow, long long oCol, int vec_out, ReluGrad<T> relu_grad,
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
  constexpr int LDS_F = CL ? LD_KC : LD_NC;  // float tiles (the register-staged path)
  // cp.async tiles: F as it is; D swizzled where the bf16 route reads it in pairs.
  using FLayout = typename std::conditional<CL, KcTile<T>, NcTile>::type;
  constexpr bool BF16_ROUTE = ASYNC && std::is_same<T, __nv_bfloat16>::value;
  using DLayout = typename std::conditional<BF16_ROUTE, SwizzledPairs, Padded<LD_KC>>::type;
  auto load = [&](int step) {
    const int j0 = step * BK;
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
  auto compute = [&](int buf, int) {
    if constexpr (BF16_ROUTE)
      mma_stage_residual_bf16<CL, DLayout>(sbuf(buf, CL ? 1 : 0), fbuf(buf, CL ? 0 : 1), stage, wm, wn, lane);
    else if (CL)
      mma_stage<true, true, features_mode<T, TF32>(), residual_mode<TF32>()>(fbuf(buf, 0), sbuf(buf, 1), stage,
                                                                            wm, wn, lane);
    else
      mma_stage<true, false, residual_mode<TF32>(), features_mode<T, TF32>()>(sbuf(buf, 0), fbuf(buf, 1), stage,
                                                                             wm, wn, lane);
    flush_stage(acc, stage);
  };

  auto issue = [&](int buf, auto step) {  // generic: compiled only on the cp.async path
    const auto j0 = step * BK;
    if (CL) {
      async_tile<TILE, BK, FLayout>(fbuf(buf, 0), Fb, ld, M, C, m0, j0);
      async_tile<TILE, BK, DLayout>(sbuf(buf, 1), Db, C, C, C, i0, j0);
    } else {
      async_tile<TILE, BK, DLayout>(sbuf(buf, 0), Db, C, C, C, i0, j0);
      async_tile<BK, TILE, FLayout>(fbuf(buf, 1), Fb, ld, C, M, j0, m0);
    }
  };
  reduce<ASYNC>(nk, issue, load, store, compute);

  const int rows = CL ? M : C, cols = CL ? C : M;
  store_tile(acc, coef * __ldg(grad_loss), out + (long long)b * sOb, rows, cols, CL ? m0 : i0, CL ? i0 : m0, oRow,
             oCol, vec_out, relu_grad.at_batch((long long)b * sOb), wm, wn, lane);
}

// ---------------------------------------------------------------- backward, D resident
// For C <= CP (64, 128 or 256) on the cp.async path. A block keeps its 64 rows of D (all C
// columns, fp32) in shared memory and walks several output tiles, streaming only F;
// the pipeline runs on across tiles, so the next tile's loads overlap this one's last
// products and stores. The plain backward reloads the D panel from L2 for every tile:
// as many bytes as its F tile at C = 64 in fp32, twice as many in bf16. Block x takes
// channel tile x % n_i and the m tiles x / n_i, + G / n_i, ... (G blocks per batch item,
// a multiple of n_i), so co-resident blocks still read neighbouring columns of F.
// Row stride (floats) of the resident D panel. The tf32 route reads single floats at
// rows g, g + 8 and columns t: a stride of 4 mod 32 keeps them conflict-free. The bf16
// route reads float pairs at columns 2t, served per half-warp: 8 mod 32 does.
template <typename T>
constexpr int panel_ld(int panel) {
  return panel + (std::is_same<T, __nv_bfloat16>::value ? 8 : 4);
}

// Shared memory of the D-resident backward: the D panel, then the F stages.
template <typename T>
constexpr int resident_smem_bytes(int panel) {
  return (TILE * panel_ld<T>(panel) + NSTAGE * SMEM_TILE) * (int)sizeof(float);
}

template <typename T, bool CL, bool TF32, int CP>
__global__ void __launch_bounds__(THREADS)
    style_bwd_resident_kernel(const float* __restrict__ D, const T* __restrict__ F, long long sFb, long long ld,
                              int C, int M, T* __restrict__ out, long long sOb, long long oRow, long long oCol,
                              int vec_out, ReluGrad<T> relu_grad, const float* __restrict__ grad_loss,
                              float coef) {
  constexpr int LDD = panel_ld<T>(CP);
  NST_DYNAMIC_SMEM(dsmem);  // [D panel: TILE x LDD][stages][SMEM_TILE]: resident_smem_bytes<T>(CP)
  float* sD = dsmem;
  auto fbuf = [&](int buf) { return reinterpret_cast<T*>(dsmem + TILE * LDD + buf * SMEM_TILE); };
  using FLayout = typename std::conditional<CL, KcTile<T>, NcTile>::type;
  using Panel = Padded<LDD>;

  const int b = blockIdx.z;
  const int n_i = (C + TILE - 1) / TILE, n_m = (M + TILE - 1) / TILE;
  const int i0 = (blockIdx.x % n_i) * TILE;
  const int first = blockIdx.x / n_i, stride = gridDim.x / n_i;
  const int tiles = first < n_m ? (n_m - 1 - first) / stride + 1 : 0;
  const int nk = (C + BK - 1) / BK;
  const int steps = tiles * nk;  // (tile, 32 of k) pairs, in order
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 1, wn = warp & 1;
  const float* Db = D + (long long)b * C * C;
  const T* Fb = F + (long long)b * sFb;
  auto m0_of = [&](int step) { return (first + (step / nk) * stride) * TILE; };

  auto issue = [&](int buf, int step) {
    const int m0 = m0_of(step), j0 = (step % nk) * BK;
    if (CL)
      async_tile<TILE, BK, FLayout>(fbuf(buf), Fb, ld, M, C, m0, j0);
    else
      async_tile<BK, TILE, FLayout>(fbuf(buf), Fb, ld, C, M, j0, m0);
  };
  auto no_load = [](int) {};  // cp.async only
  auto no_store = [](int) {};

  float acc[2][4][4], stage[2][4][4];
  zero(acc);
  zero(stage);
  const float alpha = coef * __ldg(grad_loss);
  const int rows = CL ? M : C, cols = CL ? C : M;
  const ReluGrad<T> e = relu_grad.at_batch((long long)b * sOb);
  auto compute = [&](int buf, int step) {
    const int kt = step % nk;
    const T* sF = fbuf(buf);
    const float* sDk = sD + kt * BK;
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
      mma_stage_residual_bf16<CL, Panel>(sDk, sF, stage, wm, wn, lane);
    else if (CL)
      mma_stage<true, true, features_mode<T, TF32>(), residual_mode<TF32>(), void, Panel>(sF, sDk, stage, wm, wn,
                                                                                           lane);
    else
      mma_stage<true, false, residual_mode<TF32>(), features_mode<T, TF32>(), Panel>(sDk, sF, stage, wm, wn, lane);
    flush_stage(acc, stage);
    if (kt == nk - 1) {
      const int m0 = m0_of(step);
      store_tile(acc, alpha, out + (long long)b * sOb, rows, cols, CL ? m0 : i0, CL ? i0 : m0, oRow, oCol, vec_out,
                 e, wm, wn, lane);
      zero(acc);
    }
  };
  async_tile<TILE, CP, Panel>(sD, Db, C, C, C, i0, 0);  // lands with the first F stage
  reduce<true>(steps, issue, no_load, no_store, compute);
}

}  // namespace kernels
}  // namespace nst_fast
