// The main loop the style-loss kernels share (style_loss_forward.cuh,
// style_loss_backward.cuh; nst_fast/style_loss.h has the ops' contract): the
// register-staged tile loader, the cp.async tile copy and the pipelined reduction.
//
// Both kernels are 64x64-output-tile GEMMs on the tensor cores (tile_mma.cuh: tiles,
// operand precision). Features whose rows are 16-byte aligned and a multiple of 16
// bytes long stream through a 4-stage cp.async pipeline (bf16 / fp16 kept as they are
// in shared memory); other layouts use register-staged double buffering with bounds
// checks (NST_FAST_CUDA_ASYNC=0 forces the latter).
#pragma once

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

}  // namespace kernels
}  // namespace nst_fast
