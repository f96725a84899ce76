// The forward kernel of the nst_fast style-loss ops, gram and style_loss_forward
// (nst_fast/style_loss.h has the contract; style_loss_plan.cuh its grid, plan_gram).
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
#pragma once

#include <type_traits>

#include "style_loss_pipeline.cuh"

namespace nst_fast {
namespace kernels {

__device__ __forceinline__ void red_add2(float* p, float a, float b, bool pair_ok, bool second_ok) {
#if NST_FAST_PAIR_ATOMICS
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
  constexpr int LDS = CL ? LD_NC : LD_KC;  // float tiles (the register-staged path)
  using Layout = typename std::conditional<CL, NcTile, KcTile<SF>>::type;
  TileLoader<T, TR, TC> la, lb;
  auto load = [&](int step) {
    const int kb = k0 + step * BK;
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
  auto compute = [&](int buf, int) {
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

  auto issue = [&](int buf, auto step) {  // generic: compiled only on the cp.async path
    const auto kb = k0 + step * BK;
    if (CL) {
      async_tile<TR, TC, Layout>(fbuf(buf, 0), Fb, ld, k1, C, kb, ti * TILE);
      if (!diag) async_tile<TR, TC, Layout>(fbuf(buf, 1), Fb, ld, k1, C, kb, tj * TILE);
    } else {
      async_tile<TR, TC, Layout>(fbuf(buf, 0), Fb, ld, C, k1, ti * TILE, kb);
      if (!diag) async_tile<TR, TC, Layout>(fbuf(buf, 1), Fb, ld, C, k1, tj * TILE, kb);
    }
  };
  reduce<ASYNC>(nk, issue, load, store, compute);

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
  // The mirror tile goes out through shared memory (free after the main loop), so
  // that its stores are row-wise too: written straight, each warp's would touch 32 rows.
  constexpr int LDT = TILE + 1;
  float* sT = dsmem;  // [col][row] of the tile
  float local = 0.f;
#pragma unroll
  for (int r = 0; r < PER; ++r) {
    const int lr = row0 + r * (THREADS / TILE), gi = ti * TILE + lr;
    if (gi < C && gj < C && gi <= gj) {
      const float d = gv[r] - av[r];
      Ob[(long long)gi * C + gj] = d;
      sT[col * LDT + lr] = d;
      local += (gi == gj ? 1.f : 2.f) * d * d;
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < PER; ++r) {  // row gj = tj * TILE + lc of the output, columns gi = ti * TILE + col
    const int lc = row0 + r * (THREADS / TILE), gi = ti * TILE + col, gjm = tj * TILE + lc;
    if (gi < C && gjm < C && gi < gjm) Ob[(long long)gjm * C + gi] = sT[lc * LDT + col];
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

}  // namespace kernels
}  // namespace nst_fast
