#pragma once
// CUDA kernels of a ReLU and the 2x2, stride-2 max pool after it (nst_fast/relu_pool.h).
//
// One thread per window and pack of V channels. A channels-last tensor whose channel
// count and buffers allow it takes 16 bytes of channels per thread (V = 16 / sizeof(T):
// 16-byte loads and stores); everything else takes V = 1. Work items are numbered in
// the tensor's memory order (channels fastest in channels-last, columns fastest in
// contiguous), so a warp's accesses are coalesced in both. On an odd height or width
// the last row or column of windows is partial: its positions have no pooled output
// and take only the ReLU's part.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "ieee.cuh"

namespace nst_fast {
namespace kernels {
namespace pool_k {

constexpr int kThreads = 256;

// The input's shape and the element strides of its two layouts.
struct Geometry {
  int64_t channels, height, width;
  int64_t rows, cols;      // windows down and across: ceil(H / 2), ceil(W / 2)
  int64_t packs;           // channels / V
  int64_t count;           // work items: batch * rows * cols * packs
  int64_t sb, sc, sh, sw;  // x or act, out and grad_act (one layout)
  int64_t pb, pc, ph, pw;  // the pooled tensor or grad_pooled
  bool channels_last;      // the order work items are numbered in
};

// Where one work item's window lies: its elements in row-major order (the order the
// pool scans them), as offsets from `at`; `full` where all four exist.
struct Window {
  int64_t at, pooled;
  int64_t offset[4];
  bool present[4];
  bool full;
};

template <int V>
__device__ __forceinline__ Window window_of(const Geometry& g, int64_t i) {
  int64_t c, col, row, b;
  if (g.channels_last) {
    c = i % g.packs * V;
    i /= g.packs;
    col = i % g.cols;
    i /= g.cols;
    row = i % g.rows;
    b = i / g.rows;
  } else {
    col = i % g.cols;
    i /= g.cols;
    row = i % g.rows;
    i /= g.rows;
    c = i % g.channels;
    b = i / g.channels;
  }
  const bool down = 2 * row + 1 < g.height, right = 2 * col + 1 < g.width;
  Window w;
  w.at = b * g.sb + c * g.sc + 2 * row * g.sh + 2 * col * g.sw;
  w.pooled = b * g.pb + c * g.pc + row * g.ph + col * g.pw;
  w.offset[0] = 0, w.offset[1] = g.sw, w.offset[2] = g.sh, w.offset[3] = g.sh + g.sw;
  w.present[0] = true, w.present[1] = right, w.present[2] = down, w.present[3] = down && right;
  w.full = down && right;
  return w;
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }
__device__ __forceinline__ void narrow(float v, float* out) { *out = v; }
__device__ __forceinline__ void narrow(float v, __nv_bfloat16* out) { *out = __float2bfloat16_rn(v); }
__device__ __forceinline__ void narrow(float v, __half* out) { *out = __float2half_rn(v); }

// PyTorch's ReLU keeps NaN. Comparisons by ieee.cuh, which keeps subnormals.
__device__ __forceinline__ float relu(float v) { return ieee::at_most_zero(v) ? 0.f : v; }

// PyTorch's max pool scan: a later element wins if larger or NaN.
__device__ __forceinline__ bool takes_max(float v, float best) { return ieee::is_nan(v) || ieee::greater(v, best); }

// x = relu(x) in place; pooled = the maximum of each full window.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) relu_max_pool2_kernel(T* x, T* pooled, Geometry g) {
  const int64_t stride = (int64_t)gridDim.x * kThreads;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < g.count; i += stride) {
    const Window w = window_of<V>(g, i);
    float best[V];
    for (int k = 0; k < 4; ++k) {
      if (!w.present[k]) continue;
      T* p = x + w.at + w.offset[k];
      const Pack<T, V> in = load_pack<T, V>(p);
      Pack<T, V> out;
      for (int j = 0; j < V; ++j) {
        const float v = relu(widen(in.v[j]));
        narrow(v, &out.v[j]);
        if (k == 0 || takes_max(v, best[j])) best[j] = v;
      }
      store_pack<T, V>(p, out);
    }
    if (w.full) {
      Pack<T, V> out;
      for (int j = 0; j < V; ++j) narrow(best[j], &out.v[j]);
      store_pack<T, V>(pooled + w.pooled, out);
    }
  }
}

// out = act <= 0 ? 0 : grad_act + (grad_pooled at its window's maximum, else 0);
// grad_act may be null (none). The sum is rounded to T once, as the separate add is.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    relu_max_pool2_backward_kernel(const T* act, const T* grad_pooled, const T* grad_act, T* out, Geometry g) {
  const int64_t stride = (int64_t)gridDim.x * kThreads;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < g.count; i += stride) {
    const Window w = window_of<V>(g, i);
    Pack<T, V> a[4];
    for (int k = 0; k < 4; ++k) {
      if (w.present[k]) a[k] = load_pack<T, V>(act + w.at + w.offset[k]);
    }
    int winner[V];  // the element of the window that took the maximum; -1: a partial window
    float up[V];    // its gradient
    if (w.full) {
      const Pack<T, V> gp = load_pack<T, V>(grad_pooled + w.pooled);
      for (int j = 0; j < V; ++j) {
        float best = widen(a[0].v[j]);
        winner[j] = 0;
        for (int k = 1; k < 4; ++k) {
          const float v = widen(a[k].v[j]);
          if (takes_max(v, best)) best = v, winner[j] = k;
        }
        up[j] = widen(gp.v[j]);
      }
    } else {
      for (int j = 0; j < V; ++j) winner[j] = -1, up[j] = 0.f;
    }
    for (int k = 0; k < 4; ++k) {
      if (!w.present[k]) continue;
      const int64_t at = w.at + w.offset[k];
      Pack<T, V> extra, result;
      if (grad_act != nullptr) extra = load_pack<T, V>(grad_act + at);
      for (int j = 0; j < V; ++j) {
        float r = winner[j] == k ? up[j] : 0.f;
        if (grad_act != nullptr) r = ieee::add(r, widen(extra.v[j]));
        narrow(ieee::at_most_zero(widen(a[k].v[j])) ? 0.f : r, &result.v[j]);
      }
      store_pack<T, V>(out + at, result);
    }
  }
}

// ---------------------------------------------------------------- host side
// A tensor as the launch sees it (relu_pool_cuda.cu fills it from an at::Tensor).
struct Strided {
  int64_t size[4], stride[4];
  const void* data;
};

inline bool channels_fastest(const Strided& t) { return t.size[1] > 1 && t.stride[1] == 1; }

// Whether t can be read and written v channels at a time: channels adjacent, its other
// strides whole packs (those of size-1 dims are never used), its buffer 16-byte aligned.
inline bool fits_pack(const Strided& t, int v) {
  bool ok = t.size[1] % v == 0 && t.stride[1] == 1 && reinterpret_cast<uintptr_t>(t.data) % 16 == 0;
  for (int d : {0, 2, 3}) ok = ok && (t.size[d] == 1 || t.stride[d] % v == 0);
  return ok;
}

struct Launch {
  int v;  // channels per thread
  Geometry g;
  unsigned blocks;
};

// The launch over act (or x), given the pooled tensor (or its gradient) and every
// buffer the kernel touches (null: none). max_blocks bounds the grid; the kernels'
// loops stride over the rest.
template <typename T>
inline Launch plan_launch(const Strided& act, const Strided& pooled, std::initializer_list<const Strided*> buffers,
                          int64_t max_blocks = 1 << 20) {
  constexpr int wide = 16 / sizeof(T);
  bool packed = channels_fastest(act);
  for (const Strided* t : buffers) packed = packed && (t == nullptr || fits_pack(*t, wide));
  Launch l;
  l.v = packed ? wide : 1;
  Geometry& g = l.g;
  g.channels = act.size[1], g.height = act.size[2], g.width = act.size[3];
  g.rows = (g.height + 1) / 2, g.cols = (g.width + 1) / 2;
  g.packs = g.channels / l.v;
  g.count = act.size[0] * g.rows * g.cols * g.packs;
  g.sb = act.stride[0], g.sc = act.stride[1], g.sh = act.stride[2], g.sw = act.stride[3];
  g.pb = pooled.stride[0], g.pc = pooled.stride[1], g.ph = pooled.stride[2], g.pw = pooled.stride[3];
  g.channels_last = channels_fastest(act);
  const int64_t blocks = (g.count + kThreads - 1) / kThreads;
  l.blocks = static_cast<unsigned>(blocks < 1 ? 1 : blocks < max_blocks ? blocks : max_blocks);
  return l;
}

// f(std::integral_constant<int, v>()) for the launch's channels per thread.
template <typename T, typename F>
inline void with_width(int v, F&& f) {
  if (v == 1)
    f(std::integral_constant<int, 1>());
  else
    f(std::integral_constant<int, 16 / sizeof(T)>());
}

}  // namespace pool_k
}  // namespace kernels
}  // namespace nst_fast
