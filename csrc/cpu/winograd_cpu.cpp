// Winograd F(4x4, 3x3) convolution for the CPU: the 3x3, stride-1, padding-1
// convolutions that make up VGG-19, in 36 / (16 * 9) = 1/4 of the multiplies of a
// direct convolution. The convolutions are ~90% of a style-transfer step on a CPU
// and oneDNN already runs them at the matmul rate, so fewer multiplies is the only
// way left to make them faster.
//
//   conv3x3_winograd(X, U, bias) -> Y      X (N, C, H, W), U (36, C, K), Y (N, K, H, W)
//
// bfloat16 X takes U packed as (36, C / 2, K, 2) bfloat16 (pairs of rows interleaved):
// the transforms run in float, the products on AVX512-BF16 (bf16 operands, float32
// sums), Y is bfloat16 (bf16 mode on the CPU with NST_FAST_WINOGRAD_BF16=1).
//
// U is the transformed weight G g G^T (nst_fast/winograd.py makes it once per
// layer). The input-gradient of the same convolution is this op again with the
// transform of the spatially flipped, transposed weight. Y is channels-last.
//
// Tiles of the output are processed in blocks small enough to stay in cache: per
// block, transform the input tiles (V = B^T d B), multiply V by U for each of the
// 36 points (a batched GEMM: point_gemm.cpp, or BLAS), and transform back
// (Y = A^T M A) with the bias. The deep layers run as one block (see one_pass()).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "nst_fast/style_loss.h"
#include "clones.h"
#include "nst_fast/point_gemm.h"

namespace nst_fast {
namespace {

constexpr int64_t kOut = 4;      // output tile side
constexpr int64_t kIn = 6;       // input tile side
constexpr int64_t kPoints = 36;  // kIn * kIn
constexpr int64_t kLanes = 16;   // channels transformed together
constexpr int64_t kMinBlock = 32;  // fewer tiles per thread than this: one pass (see one_pass())
constexpr int64_t kMaxOnePassBytes = 64 << 20;  // V and M of a one-pass layer; kept in step with
                                                // WINOGRAD_SCRATCH_BYTES in nst_fast/memory.py

// d[6][L] -> t[6][L] with B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0;
//                                 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1].
template <typename T>
NST_FAST_INLINE void input_rows(const T* d0, const T* d1, const T* d2, const T* d3, const T* d4, const T* d5,
                                int64_t stride, T* t) {
  for (int64_t l = 0; l < kLanes; ++l) {
    const T a = d0[l], b = d1[l], c = d2[l], d = d3[l], e = d4[l], f = d5[l];
    t[0 * stride + l] = 4 * a - 5 * c + e;
    t[1 * stride + l] = -4 * (b + c) + d + e;
    t[2 * stride + l] = 4 * (b - c) - d + e;
    t[3 * stride + l] = 2 * (d - b) - c + e;
    t[4 * stride + l] = 2 * (b - d) - c + e;
    t[5 * stride + l] = 4 * b - 5 * d + f;
  }
}

// m[6][L] -> y[4][L] with A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
template <typename T>
NST_FAST_INLINE void output_rows(const T* m0, const T* m1, const T* m2, const T* m3, const T* m4, const T* m5,
                                 int64_t stride, T* y) {
  for (int64_t l = 0; l < kLanes; ++l) {
    const T b = m1[l], c = m2[l], d = m3[l], e = m4[l];
    const T s1 = b + c, d1 = b - c, s2 = d + e, d2 = d - e;
    y[0 * stride + l] = m0[l] + s1 + s2;
    y[1 * stride + l] = d1 + 2 * d2;
    y[2 * stride + l] = s1 + 4 * s2;
    y[3 * stride + l] = d1 + 8 * d2 + m5[l];
  }
}

using BF16 = c10::BFloat16;

// Element conversions, on the raw bits of bfloat16 (uint16_t) so that the loops
// below vectorise: float -> bfloat16 rounds to nearest even, as c10's does, with
// NaN by a select instead of a branch.
NST_FAST_INLINE uint16_t bf16_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((bits & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

NST_FAST_INLINE float from_bf16_bits(uint16_t value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// n values of src into dst, converted. n is kLanes in the hot calls: a fixed count
// the compiler turns into a few vector instructions, where a memcpy of a runtime
// size would be a library call per 16 channels.
template <typename S, typename D>
NST_FAST_INLINE void convert_n(const S* src, D* dst, int64_t n) {
  if constexpr (std::is_same_v<D, BF16>) {
    auto* out = reinterpret_cast<uint16_t*>(dst);
    for (int64_t l = 0; l < n; ++l) out[l] = bf16_bits(src[l]);
  } else if constexpr (std::is_same_v<S, BF16>) {
    const auto* in = reinterpret_cast<const uint16_t*>(src);
    for (int64_t l = 0; l < n; ++l) dst[l] = from_bf16_bits(in[l]);
  } else {
    for (int64_t l = 0; l < n; ++l) dst[l] = static_cast<D>(src[l]);
  }
}

template <typename S, typename D>
NST_FAST_INLINE void copy_lanes(const S* src, D* dst) {
  convert_n(src, dst, kLanes);
}

// The first `lanes` values, the rest of the kLanes zero.
template <typename S, typename D>
NST_FAST_INLINE void copy_some(const S* src, D* dst, int64_t lanes) {
  for (int64_t l = 0; l < kLanes; ++l) dst[l] = D(0);
  convert_n(src, dst, lanes);
}

struct Geometry {
  int64_t n, c, h, w, k, tiles_y, tiles_x;
  int64_t tiles() const { return n * tiles_y * tiles_x; }
};

// Input tiles [first, first + count) of x (N, H, W, C) -> rows 0..count of v, whose
// 36 planes of (rows, C) lie `plane` values apart. X: x's element type, V: v's, A:
// the arithmetic's (bfloat16 values are transformed in float).
// Inlined into each target_clones copy below, so each gets its own instruction set.
template <typename A, typename X, typename V>
NST_FAST_INLINE void transform_input(const X* x, const Geometry& g, int64_t first, int64_t count,
                                     int64_t plane, V* v, const X* zeros) {
  A d[kPoints][kLanes], t[kPoints][kLanes], out[kPoints][kLanes];
  const X* src[kPoints];
  for (int64_t i = 0; i < count; ++i) {
    const int64_t tile = first + i;
    const int64_t n = tile / (g.tiles_y * g.tiles_x), rest = tile % (g.tiles_y * g.tiles_x);
    const int64_t y0 = (rest / g.tiles_x) * kOut - 1, x0 = (rest % g.tiles_x) * kOut - 1;
    for (int64_t r = 0; r < kIn; ++r) {
      for (int64_t s = 0; s < kIn; ++s) {
        const int64_t y = y0 + r, xx = x0 + s;
        const bool inside = y >= 0 && y < g.h && xx >= 0 && xx < g.w;
        src[r * kIn + s] = inside ? x + ((n * g.h + y) * g.w + xx) * g.c : zeros;
      }
    }
    for (int64_t c0 = 0; c0 < g.c; c0 += kLanes) {
      const int64_t lanes = std::min(kLanes, g.c - c0);
      if (lanes == kLanes) {
        for (int64_t p = 0; p < kPoints; ++p) copy_lanes(src[p] + c0, d[p]);
      } else {
        for (int64_t p = 0; p < kPoints; ++p) copy_some(src[p] + c0, d[p], lanes);
      }
      // Columns of every row, then rows of every column: t = d B, out = B^T t.
      for (int64_t r = 0; r < kIn; ++r) {
        const int64_t o = r * kIn;
        input_rows(d[o], d[o + 1], d[o + 2], d[o + 3], d[o + 4], d[o + 5], kLanes, t[o]);
      }
      for (int64_t s = 0; s < kIn; ++s) {
        input_rows(t[s], t[s + 6], t[s + 12], t[s + 18], t[s + 24], t[s + 30], kIn * kLanes, out[s]);
      }
      V* dst = v + i * g.c + c0;
      if (lanes == kLanes) {
        for (int64_t p = 0; p < kPoints; ++p) copy_lanes(out[p], dst + p * plane);
      } else {
        for (int64_t p = 0; p < kPoints; ++p) convert_n(out[p], dst + p * plane, lanes);
      }
    }
  }
}

// Rows 0..count of m (36 planes of (rows, K), `plane` values apart) -> output tiles
// [first, first + count) of y (N, H, W, K), plus bias; Y: y's element type.
template <typename A, typename Y>
NST_FAST_INLINE void transform_output(const A* m, int64_t plane, const A* bias, const Geometry& g,
                                      int64_t first, int64_t count, Y* y) {
  A in[kPoints][kLanes], t[kIn * kOut][kLanes], out[kOut * kOut][kLanes], b[kLanes];
  for (int64_t i = 0; i < count; ++i) {
    const int64_t tile = first + i;
    const int64_t n = tile / (g.tiles_y * g.tiles_x), rest = tile % (g.tiles_y * g.tiles_x);
    const int64_t y0 = (rest / g.tiles_x) * kOut, x0 = (rest % g.tiles_x) * kOut;
    const int64_t rows = std::min(kOut, g.h - y0), cols = std::min(kOut, g.w - x0);
    for (int64_t k0 = 0; k0 < g.k; k0 += kLanes) {
      const int64_t lanes = std::min(kLanes, g.k - k0);
      const A* src = m + i * g.k + k0;
      if (lanes == kLanes) {
        for (int64_t p = 0; p < kPoints; ++p) copy_lanes(src + p * plane, in[p]);
      } else {
        for (int64_t p = 0; p < kPoints; ++p) copy_some(src + p * plane, in[p], lanes);
      }
      // t[r][j] = sum_s in[r][s] A[s][j] (6 x 4), out = A^T t (4 x 4).
      for (int64_t r = 0; r < kIn; ++r) {
        const int64_t o = r * kIn;
        output_rows(in[o], in[o + 1], in[o + 2], in[o + 3], in[o + 4], in[o + 5], kLanes, t[r * kOut]);
      }
      for (int64_t j = 0; j < kOut; ++j) {
        output_rows(t[j], t[j + 4], t[j + 8], t[j + 12], t[j + 16], t[j + 20], kOut * kLanes, out[j]);
      }
      for (int64_t l = 0; l < kLanes; ++l) b[l] = (bias && l < lanes) ? bias[k0 + l] : A(0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t s = 0; s < cols; ++s) {
          Y* dst = y + ((n * g.h + y0 + r) * g.w + x0 + s) * g.k + k0;
          const A* row = out[r * kOut + s];
          A sum[kLanes];
          for (int64_t l = 0; l < kLanes; ++l) sum[l] = row[l] + b[l];
          if (lanes == kLanes) {
            copy_lanes(sum, dst);
          } else {
            convert_n(sum, dst, lanes);
          }
        }
      }
    }
  }
}

NST_FAST_CLONES void transform_input_f(const float* x, const Geometry& g, int64_t first, int64_t count,
                                       int64_t plane, float* v, const float* zeros) {
  transform_input<float>(x, g, first, count, plane, v, zeros);
}
NST_FAST_CLONES void transform_output_f(const float* m, int64_t plane, const float* bias, const Geometry& g,
                                        int64_t first, int64_t count, float* y) {
  transform_output(m, plane, bias, g, first, count, y);
}
NST_FAST_CLONES void transform_input_bf16(const BF16* x, const Geometry& g, int64_t first, int64_t count,
                                          int64_t plane, BF16* v, const BF16* zeros) {
  transform_input<float>(x, g, first, count, plane, v, zeros);
}
NST_FAST_CLONES void transform_output_bf16(const float* m, int64_t plane, const float* bias, const Geometry& g,
                                           int64_t first, int64_t count, BF16* y) {
  transform_output(m, plane, bias, g, first, count, y);
}

// float64 (for tests) runs the generic code; float32 and bfloat16 get the
// instruction-set clones.
template <typename T>
void input_tiles(const T* x, const Geometry& g, int64_t first, int64_t count, int64_t plane, T* v,
                 const T* zeros) {
  if constexpr (std::is_same_v<T, float>) {
    transform_input_f(x, g, first, count, plane, v, zeros);
  } else if constexpr (std::is_same_v<T, BF16>) {
    transform_input_bf16(x, g, first, count, plane, v, zeros);
  } else {
    transform_input<T>(x, g, first, count, plane, v, zeros);
  }
}

template <typename A, typename Y>
void output_tiles(const A* m, int64_t plane, const A* bias, const Geometry& g, int64_t first, int64_t count,
                  Y* y) {
  if constexpr (std::is_same_v<Y, float>) {
    transform_output_f(m, plane, bias, g, first, count, y);
  } else if constexpr (std::is_same_v<Y, BF16>) {
    transform_output_bf16(m, plane, bias, g, first, count, y);
  } else {
    transform_output(m, plane, bias, g, first, count, y);
  }
}

// Tiles per block: 64 was the fastest of 32..256 at every VGG-19 layer shape on a
// 2-core Zen 4 (the per-point GEMMs want tall blocks, V and M want to stay in L2).
int64_t block_tiles(const Geometry& g) {
  const int64_t threads = at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(64, (g.tiles() + threads - 1) / threads));
}

// Every block reads all of U (36 C K values). Where a thread's tiles hold fewer
// values of V and M than that (the deep layers: few tiles, many channels), one block
// for all tiles reads U once, and the GEMM over the 36 points is what is split
// across threads; unless V and M would take more than kMaxOnePassBytes.
bool one_pass(const Geometry& g, int64_t v_itemsize, int64_t m_itemsize) {
  const int64_t threads = at::get_num_threads();
  const int64_t tiles_per_thread = (g.tiles() + threads - 1) / threads;
  const bool fits = kPoints * g.tiles() * (g.c * v_itemsize + g.k * m_itemsize) <= kMaxOnePassBytes;
  return fits && (tiles_per_thread < kMinBlock || tiles_per_thread * (g.c + g.k) <= g.c * g.k);
}

// m_p = v_p u_p for each point p of these (points, rows, C), (points, C, K) and
// (points, rows, K) views: by point_gemm (float32 only), else BLAS.
void multiply_points(const at::Tensor& v, const at::Tensor& u, at::Tensor m, bool fast) {
  if (fast) {
    point_gemm(v.size(0), v.size(1), v.size(2), u.size(2), v.const_data_ptr<float>(), v.stride(0),
               u.const_data_ptr<float>(), m.mutable_data_ptr<float>(), m.stride(0));
  } else {
    at::bmm_out(m, v, u);
  }
}

// The three stages over every tile, into y: V = the transformed input tiles (element
// type V), M = their 36 point products with U (type A, as the bias), y = the
// transformed output. Either one block of all tiles (one_pass(): multiply_all(v, m)
// threads the products), or blocks of block_tiles() per thread (multiply_rows(v, m,
// rows): the first `rows` rows of each plane of v).
template <typename V, typename A, typename X, typename Y, typename MultiplyAll, typename MultiplyRows>
void run_tiles(const Geometry& g, const X* xp, const A* bp, Y* yp, const at::TensorOptions& v_options,
               const at::TensorOptions& m_options, MultiplyAll multiply_all, MultiplyRows multiply_rows) {
  const std::vector<X> zeros(g.c, X(0.0f));
  if (one_pass(g, sizeof(V), sizeof(A))) {
    const int64_t tiles = g.tiles();
    auto v = at::empty({kPoints, tiles, g.c}, v_options);
    auto m = at::empty({kPoints, tiles, g.k}, m_options);
    V* vp = v.template mutable_data_ptr<V>();
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      input_tiles(xp, g, begin, end - begin, v.stride(0), vp + begin * g.c, zeros.data());
    });
    multiply_all(v, m);
    const A* mp = m.template const_data_ptr<A>();
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      output_tiles(mp + begin * g.k, m.stride(0), bp, g, begin, end - begin, yp);
    });
    return;
  }
  const int64_t per_block = block_tiles(g);
  const int64_t blocks = (g.tiles() + per_block - 1) / per_block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    auto v = at::empty({kPoints, per_block, g.c}, v_options);
    auto m = at::empty({kPoints, per_block, g.k}, m_options);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * per_block;
      const int64_t count = std::min(per_block, g.tiles() - first);
      // A short last block uses the first `count` rows of each plane.
      input_tiles(xp, g, first, count, v.stride(0), v.template mutable_data_ptr<V>(), zeros.data());
      multiply_rows(v, m, count);
      output_tiles(m.template const_data_ptr<A>(), m.stride(0), bp, g, first, count, yp);
    }
  });
}

// bfloat16 input and output, transformed in float, the 36 products by point_gemm_bf16
// (bfloat16 operands, float32 sums); u is (36, C / 2, K, 2), packed as it wants.
void conv3x3_winograd_bf16(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias, const Geometry& g,
                           at::Tensor& y) {
  TORCH_CHECK(point_gemm_bf16_supported(g.k), "nst_fast.conv3x3_winograd: bfloat16 needs a CPU with "
              "AVX512-BF16 and K a multiple of 32, got K = ", g.k);
  at::Tensor b;
  if (bias.defined()) b = bias.to(at::kFloat).contiguous();
  const auto* up = reinterpret_cast<const uint16_t*>(u.const_data_ptr<BF16>());
  // Points [first, first + points) of the first `rows` rows of v's planes, into m.
  auto multiply = [&](const at::Tensor& v, at::Tensor& m, int64_t first, int64_t points, int64_t rows) {
    point_gemm_bf16(points, rows, g.c, g.k,
                    reinterpret_cast<const uint16_t*>(v.const_data_ptr<BF16>()) + first * v.stride(0),
                    v.stride(0), up + first * g.c * g.k, m.mutable_data_ptr<float>() + first * m.stride(0),
                    m.stride(0));
  };
  const auto v_options = x.options().memory_format(at::MemoryFormat::Contiguous);
  run_tiles<BF16>(
      g, x.const_data_ptr<BF16>(), b.defined() ? b.const_data_ptr<float>() : nullptr, y.mutable_data_ptr<BF16>(),
      v_options, v_options.dtype(at::kFloat),
      [&](const at::Tensor& v, at::Tensor& m) {
        const int64_t rows = v.size(1);
        at::parallel_for(0, kPoints, 1, [&](int64_t begin, int64_t end) { multiply(v, m, begin, end - begin, rows); });
      },
      [&](const at::Tensor& v, at::Tensor& m, int64_t rows) { multiply(v, m, 0, kPoints, rows); });
}

at::Tensor conv3x3_winograd_cpu(const at::Tensor& input, const at::Tensor& weight_transform,
                                const c10::optional<at::Tensor>& bias) {
  check_winograd_args(input, weight_transform, bias);
  const auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const auto u = weight_transform.contiguous();
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), u.size(2), 0, 0};
  g.tiles_y = (g.h + kOut - 1) / kOut;
  g.tiles_x = (g.w + kOut - 1) / kOut;
  auto y = at::empty({g.n, g.k, g.h, g.w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  if (x.scalar_type() == at::kBFloat16) {
    conv3x3_winograd_bf16(x, u, b, g, y);
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_winograd_cpu", [&] {
    const bool fast_gemm = std::is_same_v<scalar_t, float> && point_gemm_supported(g.k);
    const auto scratch = x.options().memory_format(at::MemoryFormat::Contiguous);
    run_tiles<scalar_t>(
        g, x.const_data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
        y.mutable_data_ptr<scalar_t>(), scratch, scratch,
        [&](const at::Tensor& v, at::Tensor& m) {
          // BLAS (threaded itself) was faster on the 512 x 512 points, point_gemm on
          // the smaller ones.
          if (fast_gemm && g.c * g.k <= 256 * 512) {
            at::parallel_for(0, kPoints, 1, [&](int64_t begin, int64_t end) {
              const int64_t n = end - begin;
              multiply_points(v.narrow(0, begin, n), u.narrow(0, begin, n), m.narrow(0, begin, n), true);
            });
          } else {
            multiply_points(v, u, m, false);
          }
        },
        [&](const at::Tensor& v, at::Tensor& m, int64_t rows) {
          multiply_points(v.narrow(1, 0, rows), u, m.narrow(1, 0, rows), fast_gemm);
        });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CPU, m) { m.impl("conv3x3_winograd", &conv3x3_winograd_cpu); }

}  // namespace nst_fast
