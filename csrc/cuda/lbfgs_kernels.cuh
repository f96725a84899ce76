#pragma once
// CUDA kernels of the fused L-BFGS step (nst_fast/lbfgs.h has the passes and the plan).
// Every pass but the plan runs lbfgs::blocks(n) blocks of kThreads threads; block b
// handles chunks b, b + gridDim.x, ... of kChunk elements, kPerThread per thread.
#include "nst_fast/lbfgs.h"
#ifndef NST_FAST_PTX_PROVIDED  // the emulator's own
#include "ptx.cuh"
#endif

namespace nst_fast {
namespace kernels {
namespace lbfgs_k {

using namespace nst_fast::lbfgs;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPerThread = kChunk / kThreads;

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_max(double v) {
  for (int o = 16; o > 0; o >>= 1) {
    const double u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  return v;
}

// Pass 1: partial[block] = (W s, W y, W g, the scalars of lbfgs::Scalar) over its chunks.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    dots_kernel(const T* x, const T* x_a, const T* g, const T* g_a, const T* d, const T* W, int64_t n, int h,
                double* partial) {
  __shared__ double acc[kWarps][3 * 2 * kMaxHistory];  // per warp: W s, W y, W g
  __shared__ double red[kWarps][kScalars];
  const int H = 2 * h, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int k = lane; k < 3 * H; k += 32) acc[warp][k] = 0.0;
  double sc[kScalars];
  for (int k = 0; k < kScalars; ++k) sc[k] = 0.0;
  __syncthreads();
  for (int64_t c = blockIdx.x; c * kChunk < n; c += gridDim.x) {
    T s[kPerThread], y[kPerThread], gv[kPerThread];
    for (int k = 0; k < kPerThread; ++k) {
      const int64_t e = c * kChunk + k * kThreads + threadIdx.x;
      s[k] = y[k] = gv[k] = T(0);
      if (e >= n) continue;
      s[k] = x[e] - x_a[e];
      gv[k] = g[e];
      y[k] = gv[k] - g_a[e];
      const double si = s[k], yi = y[k], gi = gv[k];
      sc[kSS] += si * si, sc[kSY] += si * yi, sc[kYY] += yi * yi;
      sc[kSG] += si * gi, sc[kYG] += yi * gi, sc[kGG] += gi * gi;
      sc[kGAbs] += fabs(gi);
      sc[kGaD] += double(g_a[e]) * double(d[e]);
      sc[kNonFinite] += finite(gi) ? 0.0 : 1.0;
    }
    for (int r = 0; r < H; ++r) {
      double ws = 0.0, wy = 0.0, wg = 0.0;
      for (int k = 0; k < kPerThread; ++k) {
        const int64_t e = c * kChunk + k * kThreads + threadIdx.x;
        if (e >= n) continue;
        const double w = W[r * n + e];
        ws += w * double(s[k]), wy += w * double(y[k]), wg += w * double(gv[k]);
      }
      ws = warp_sum(ws), wy = warp_sum(wy), wg = warp_sum(wg);
      if (lane == 0) acc[warp][r] += ws, acc[warp][H + r] += wy, acc[warp][2 * H + r] += wg;
    }
  }
  for (int k = 0; k < kScalars; ++k) {
    const double v = warp_sum(sc[k]);
    if (lane == 0) red[warp][k] = v;
  }
  __syncthreads();
  double* out = partial + blockIdx.x * partial_width(h);
  for (int k = threadIdx.x; k < 3 * H + kScalars; k += kThreads) {
    double v = 0.0;
    for (int w = 0; w < kWarps; ++w) v += k < 3 * H ? acc[w][k] : red[w][k - 3 * H];
    out[k] = v;
  }
}

// Pass 2, one block: the partial sums reduced in block order, then lbfgs_plan on one
// thread over a shared-memory copy of W W^T. Dynamic shared memory: plan_smem_bytes(h).
inline int plan_smem_bytes(int h) { return static_cast<int>((partial_width(h) + 4 * h * h) * sizeof(double)); }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    plan_kernel(const double* partial, int nblocks, int h, const T* loss, T* f_a, T* t, double* WW, bool* valid,
                int64_t* idx, int64_t* steps, int64_t* accepted, double* plan, Params p) {
  NST_DYNAMIC_SMEM(smem_f);
  double* sums = reinterpret_cast<double*>(smem_f);
  const int width = static_cast<int>(partial_width(h)), H = 2 * h;
  double* ww = sums + width;
  __shared__ bool vld[kMaxHistory];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int k = warp; k < width; k += kWarps) {
    double v = 0.0;
    for (int b = lane; b < nblocks; b += 32) v += partial[static_cast<int64_t>(b) * width + k];
    v = warp_sum(v);
    if (lane == 0) sums[k] = v;
  }
  for (int i = threadIdx.x; i < H * H; i += kThreads) ww[i] = WW[i];
  for (int i = threadIdx.x; i < h; i += kThreads) vld[i] = valid[i];
  __syncthreads();
  if (threadIdx.x == 0) {
    Scalars sc{double(*f_a), double(*t), *idx, *steps, *accepted};
    lbfgs_plan(sums, double(*loss), p, h, ww, vld, sc, plan);
    *f_a = T(sc.f_a);
    *t = T(sc.t);
    *idx = sc.idx, *steps = sc.steps, *accepted = sc.accepted;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < H * H; i += kThreads) WW[i] = ww[i];
  for (int i = threadIdx.x; i < h; i += kThreads) valid[i] = vld[i];
}

// Pass 3, accepted steps only: the new direction, the pushed pair into W, x_a = x,
// g_a = g, and each block's max |d| in dmax.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    direction_kernel(const T* x, T* x_a, const T* g, T* g_a, T* d, T* W, int64_t n, int h, const double* plan,
                     double* dmax) {
  __shared__ double coef[2 * kMaxHistory];
  __shared__ double red[kWarps];
  if (plan[kOk] == 0) return;  // the same for every thread
  const int H = 2 * h, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = threadIdx.x; r < H; r += kThreads) coef[r] = plan[kPlanHead + r];
  __syncthreads();
  const bool push = plan[kPush] != 0, reset = plan[kReset] != 0;
  const int slot = static_cast<int>(plan[kSlot]);
  const double gamma = plan[kGamma];
  double m = 0.0;
  for (int64_t c = blockIdx.x; c * kChunk < n; c += gridDim.x) {
    for (int k = 0; k < kPerThread; ++k) {
      const int64_t e = c * kChunk + k * kThreads + threadIdx.x;
      if (e >= n) continue;
      const T xe = x[e], ge = g[e];
      const T s = xe - x_a[e], y = ge - g_a[e];
      T de = -ge;
      if (!reset) {
        double acc = gamma * double(ge);
        for (int r = 0; r < H; ++r) {
          const T w = !push ? W[r * n + e] : r == slot ? s : r == h + slot ? y : W[r * n + e];
          acc += coef[r] * double(w);
        }
        de = T(-acc);
      }
      if (push) W[slot * n + e] = s, W[(h + slot) * n + e] = y;
      d[e] = de;
      x_a[e] = xe;
      g_a[e] = ge;
      const double a = fabs(double(de));
      m = a > m ? a : m;
    }
  }
  m = warp_max(m);
  if (lane == 0) red[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) m = red[w] > m ? red[w] : m;
    dmax[blockIdx.x] = m;
  }
}

// Pass 4: t (bounded by max_step / max |d| on an accepted step, else the plan's
// backtracked t already in *t), then x = x_a + t d.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    move_kernel(T* x, const T* x_a, const T* d, int64_t n, const double* plan, const double* dmax, int nblocks,
                T* t, Params p) {
  __shared__ T step;
  if (threadIdx.x < 32) {
    const bool ok = plan[kOk] != 0;
    double m = 0.0;
    for (int b = threadIdx.x; ok && b < nblocks; b += 32) m = dmax[b] > m ? dmax[b] : m;
    m = warp_max(m);
    if (threadIdx.x == 0) {
      const T bounded = T(bounded_t(plan, m, p));
      step = ok ? bounded : *t;
      if (ok && blockIdx.x == 0) *t = bounded;
    }
  }
  __syncthreads();
  const T ts = step;
  for (int64_t c = blockIdx.x; c * kChunk < n; c += gridDim.x) {
    for (int k = 0; k < kPerThread; ++k) {
      const int64_t e = c * kChunk + k * kThreads + threadIdx.x;
      if (e < n) x[e] = x_a[e] + ts * d[e];
    }
  }
}

}  // namespace lbfgs_k
}  // namespace kernels
}  // namespace nst_fast
