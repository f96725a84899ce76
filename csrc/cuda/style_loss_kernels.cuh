// Device code of the nst_fast style-loss ops (see nst_fast/style_loss.h for the contract) and
// the launch arithmetic the host side and the CPU emulator (tests/cuda_emulator) share.
//
// Both kernels are 64x64-output-tile GEMMs on the tensor cores (tile_mma.cuh: tiles,
// operand precision). Features whose rows are 16-byte aligned and a multiple of 16
// bytes long stream through a 4-stage cp.async pipeline (bf16 / fp16 kept as they are
// in shared memory); other layouts use register-staged double buffering with bounds
// checks (NST_FAST_CUDA_ASYNC=0 forces the latter).
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

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "ieee.cuh"
#include "tile_mma.cuh"

namespace nst_fast {
namespace kernels {

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
// NSTAGE - 1 stages ahead, zero-filled outside the matrix, in tile layout L.
constexpr int NSTAGE = 4;

template <int TR, int TC, typename L, typename T>
__device__ __forceinline__ void async_tile(T* __restrict__ s, const T* __restrict__ base, long long ld, int rows,
                                           int cols, int r0, int c0) {
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
    cp_async16(s + L::at(rr, cc), p ? base + (long long)gr * ld + gc : base, p);
  }
}

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

// The main loop over a block's steps (stages of BK of the reduction). cp.async:
// issue(buf, step) starts the copies of a step into buffer buf, NSTAGE - 1 steps
// ahead. Register-staged: load(step) into registers, store(buf) into shared memory,
// double-buffered. compute(buf, step) consumes the step in buf.
template <bool ASYNC, typename Issue, typename Load, typename Store, typename Compute>
__device__ __forceinline__ void reduce(int steps, Issue& issue, Load& load, Store& store, Compute& compute) {
  if constexpr (ASYNC) {
#pragma unroll
    for (int st = 0; st < NSTAGE - 1; ++st) {
      if (st < steps) issue(st, st);
      cp_async_commit();
    }
    for (int step = 0; step < steps; ++step) {
      cp_async_wait<NSTAGE - 2>();
      __syncthreads();  // this step's stage landed for all threads; the previous one is consumed
      const int nxt = step + NSTAGE - 1;
      if (nxt < steps) issue(nxt % NSTAGE, nxt);
      cp_async_commit();
      compute(step % NSTAGE, step);
    }
    cp_async_wait<0>();
  } else {
    if (steps > 0) {
      load(0);
      store(0);
    }
    __syncthreads();
    for (int step = 0; step < steps; ++step) {
      const int buf = step & 1;
      if (step + 1 < steps) load(step + 1);
      compute(buf, step);
      if (step + 1 < steps) store(buf ^ 1);
      __syncthreads();
    }
  }
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

// Every row of B matrices (row stride ld, batch stride sb, cols elements of elem bytes
// each) starts n-element aligned and holds whole groups of n.
inline bool rows_in_groups(const void* p, size_t elem, long long n, long long sb, long long ld, long long cols,
                           long long B) {
  return aligned(p, n * elem) && ld % n == 0 && (B == 1 || sb % n == 0) && cols % n == 0;
}

// 4-element vector loads of the register-staged path are legal.
inline bool vec_ok(const void* p, size_t elem, long long sb, long long ld, long long cols, long long B) {
  return rows_in_groups(p, elem, 4, sb, ld, cols, B);
}

// The cp.async pipeline copies 16 bytes at a time: the base, the row and batch
// strides and the row length must all be multiples of 16 bytes.
inline bool async_layout_ok(const void* p, size_t elem, long long sb, long long ld, long long cols, long long B) {
  return rows_in_groups(p, elem, 16 / (long long)elem, sb, ld, cols, B);
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
  int vec;                 // neighbours along a tile row stored together: 1, 2, or 8 (16 bytes of 2-byte values)
};

// add and relu: ReluGrad's buffers (null: absent), read at out's offsets, so vec is as
// wide as all three allow.
inline BackwardOut backward_out(const void* out, const void* add, const void* relu, size_t elem, long long s0,
                                long long s1, long long s2, bool cl, long long C, long long M, long long B) {
  BackwardOut o{s0, cl ? s2 : s1, cl ? s1 : s2, 1};
  const long long cols = cl ? C : M;
  auto all_in_groups = [&](long long n) {
    for (const void* p : {out, add, relu})
      if (p != nullptr && !rows_in_groups(p, elem, n, o.sb, o.row, cols, B)) return false;
    return true;
  };
  if (o.col == 1 && elem == 2 && all_in_groups(8))
    o.vec = 8;
  else if (o.col == 1 && all_in_groups(2))
    o.vec = 2;
  return o;
}

// The widest D panel the D-resident backward takes, from the NST_FAST_CUDA_RESIDENT
// setting: 0 turns it off; 256 adds the 256-column panel (C <= 256: relu3_1), which
// leaves 2 blocks per SM, an experiment for the device's A/B; anything else gives the
// default, C <= 128.
inline int resident_limit(long long setting) {
  return setting == 0 ? 0 : setting == 256 ? 256 : 128;
}

// Backward grid per batch item, for features of type T. The D-resident kernel where it
// applies (the cp.async path, C <= limit): one wave of blocks, each walking several m
// tiles of one channel tile; as many blocks per SM as the panel's shared memory allows
// (4 with the 64-column panel's 53-54 KB, 3 with the 128-column one's 69-70 KB, 2 with
// the 256-column one's 102-103 KB). Else one block per output tile.
struct BackwardPlan {
  bool resident;
  int panel;          // resident: the D panel's column capacity (64, 128 or 256)
  long long blocks;   // grid.x
  int smem_bytes;     // dynamic shared memory
};

template <typename T>
BackwardPlan plan_backward(long long B, long long C, long long M, bool async, int limit, long long sms) {
  const long long n_i = (C + TILE - 1) / TILE, n_m = (M + TILE - 1) / TILE;
  if (!async || C > limit) {
    return {false, 0, n_i * n_m, async ? SMEM_ASYNC_BYTES : SMEM_SYNC_BYTES};
  }
  const int panel = C <= 64 ? 64 : C <= 128 ? 128 : 256;
  long long groups = (panel == 64 ? 4 : panel == 128 ? 3 : 2) * sms / (B * n_i);
  if (groups < 1) groups = 1;
  if (groups > n_m) groups = n_m;
  return {true, panel, groups * n_i, resident_smem_bytes<T>(panel)};
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


// Calls launch(kernel) with the D-resident backward for the layout, panel and precision.
template <typename T, typename Launch>
void with_resident_kernel(bool cl, bool tf32, int panel, Launch&& launch) {
  auto go = [&](auto layout, auto cp) {
    constexpr bool CL = decltype(layout)::value;
    constexpr int CP = decltype(cp)::value;
    if constexpr (std::is_same<T, float>::value) {
      if (tf32) {
        launch(style_bwd_resident_kernel<T, CL, true, CP>);
        return;
      }
    }
    launch(style_bwd_resident_kernel<T, CL, false, CP>);
  };
  using P64 = std::integral_constant<int, 64>;
  using P128 = std::integral_constant<int, 128>;
  using P256 = std::integral_constant<int, 256>;
  auto by_panel = [&](auto layout) {
    if (panel == 64)
      go(layout, P64{});
    else if (panel == 128)
      go(layout, P128{});
    else
      go(layout, P256{});
  };
  if (cl)
    by_panel(std::true_type{});
  else
    by_panel(std::false_type{});
}

}  // namespace kernels
}  // namespace nst_fast
