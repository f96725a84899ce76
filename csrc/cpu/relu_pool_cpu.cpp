// A ReLU followed by a 2x2, stride-2 max pool (VGG's pools), forward and backward, each
// in one pass. Forward: the ReLU in place and each window's maximum. Backward: each
// input position gets the pooled gradient if it is its window's maximum, plus the
// gradient reaching the ReLU's output from elsewhere, masked where the ReLU's output
// is not positive; autograd runs a zero fill, the pool's scatter, an add and the
// ReLU's threshold_backward for it. Both equal the separate ops bit for bit
// (nst_fast/relu_pool.h). Float32 channels-last, 16 or 8 channels at a time (AVX-512,
// AVX2); anything else runs those ops.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <c10/util/Exception.h>

#include <cstdlib>

#include "nst_fast/relu_pool.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace nst_fast {
namespace {

// Strides in elements of a channels-last (B, H, W, C) float tensor.
struct Nhwc {
  int64_t b, h, w;
};

// The four positions of a window, as offsets from act, out and grad_act.
using Window = int64_t[4];

// One window, channels [c0, c1). PyTorch's scan: row-major in the window, a later
// element wins if larger or NaN; then the ReLU's mask (a NaN activation keeps its
// gradient, as in threshold_backward).
inline void window_scalar(const float* act, const float* grad_act, float* out, const float* g, const Window& o,
                          int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    float v[4], r[4];
    int k = 0;
    for (int i = 0; i < 4; ++i) v[i] = act[o[i] + c];
    float m = v[0];
    for (int i = 1; i < 4; ++i) {
      if (v[i] > m || v[i] != v[i]) {
        m = v[i];
        k = i;
      }
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = i == k ? g[c] : 0.f;
      if (grad_act != nullptr) r[i] += grad_act[o[i] + c];
      out[o[i] + c] = v[i] <= 0.f ? 0.f : r[i];
    }
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define NST_FAST_X86_WINDOWS 1
// The same 16 channels at a time (GCC leaves the scalar loop unvectorised); returns the
// first channel left for window_scalar.
__attribute__((target("avx512f"))) int64_t window_avx512(const float* act, const float* grad_act, float* out,
                                                         const float* g, const Window& o, int64_t c_count) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= c_count; c += 16) {
    __m512 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm512_loadu_ps(act + o[i] + c);
    __mmask16 later[4] = {0, 0, 0, 0};  // later[i]: element i took the maximum from those before it
    __m512 m = v[0];
    for (int i = 1; i < 4; ++i) {
      later[i] = _mm512_cmp_ps_mask(v[i], m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v[i], v[i], _CMP_UNORD_Q);
      m = _mm512_mask_mov_ps(m, later[i], v[i]);
    }
    const __mmask16 win[4] = {(__mmask16)~(later[1] | later[2] | later[3]),
                              (__mmask16)(later[1] & ~later[2] & ~later[3]), (__mmask16)(later[2] & ~later[3]),
                              later[3]};
    const __m512 gc = _mm512_loadu_ps(g + c);
    for (int i = 0; i < 4; ++i) {
      __m512 r = _mm512_maskz_mov_ps(win[i], gc);
      if (grad_act != nullptr) r = _mm512_add_ps(r, _mm512_loadu_ps(grad_act + o[i] + c));
      const __mmask16 keep = _mm512_cmp_ps_mask(v[i], zero, _CMP_NLE_UQ);  // not v <= 0
      _mm512_storeu_ps(out + o[i] + c, _mm512_maskz_mov_ps(keep, r));
    }
  }
  return c;
}

// The same 8 channels at a time with AVX2, the masks as all-ones lanes.
__attribute__((target("avx2"))) int64_t window_avx2(const float* act, const float* grad_act, float* out,
                                                     const float* g, const Window& o, int64_t c_count) {
  const __m256 zero = _mm256_setzero_ps(), ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  int64_t c = 0;
  for (; c + 8 <= c_count; c += 8) {
    __m256 v[4], later[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(act + o[i] + c);
    __m256 m = v[0];
    for (int i = 1; i < 4; ++i) {
      later[i] = _mm256_or_ps(_mm256_cmp_ps(v[i], m, _CMP_GT_OQ), _mm256_cmp_ps(v[i], v[i], _CMP_UNORD_Q));
      m = _mm256_blendv_ps(m, v[i], later[i]);
    }
    const __m256 after2 = _mm256_or_ps(later[2], later[3]);
    const __m256 win[4] = {_mm256_andnot_ps(_mm256_or_ps(later[1], after2), ones), _mm256_andnot_ps(after2, later[1]),
                           _mm256_andnot_ps(later[3], later[2]), later[3]};
    const __m256 gc = _mm256_loadu_ps(g + c);
    for (int i = 0; i < 4; ++i) {
      __m256 r = _mm256_and_ps(win[i], gc);  // gc or +0
      if (grad_act != nullptr) r = _mm256_add_ps(r, _mm256_loadu_ps(grad_act + o[i] + c));
      const __m256 keep = _mm256_cmp_ps(v[i], zero, _CMP_NLE_UQ);  // not v <= 0
      _mm256_storeu_ps(out + o[i] + c, _mm256_and_ps(keep, r));
    }
  }
  return c;
}
#endif

// The forward of one window, channels [c0, c1): the ReLU in place (NaN kept, as
// PyTorch's) and the window's maximum by the same scan as above into pooled.
inline void forward_scalar(float* x, float* pooled, const Window& o, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    float m = 0.f;
    for (int i = 0; i < 4; ++i) {
      const float v = x[o[i] + c];
      const float r = v > 0.f || v != v ? v : 0.f;
      x[o[i] + c] = r;
      if (i == 0 || r > m || r != r) m = r;
    }
    pooled[c] = m;
  }
}

#ifdef NST_FAST_X86_WINDOWS
// max(0, v) keeps a NaN v: MAXPS returns its second operand where either is NaN.
__attribute__((target("avx512f"))) int64_t forward_avx512(float* x, float* pooled, const Window& o,
                                                          int64_t c_count) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= c_count; c += 16) {
    __m512 m = zero;
    for (int i = 0; i < 4; ++i) {
      const __m512 r = _mm512_max_ps(zero, _mm512_loadu_ps(x + o[i] + c));
      _mm512_storeu_ps(x + o[i] + c, r);
      const __mmask16 later = i == 0 ? (__mmask16)0xFFFF
                                     : (__mmask16)(_mm512_cmp_ps_mask(r, m, _CMP_GT_OQ) |
                                                   _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q));
      m = _mm512_mask_mov_ps(m, later, r);
    }
    _mm512_storeu_ps(pooled + c, m);
  }
  return c;
}

__attribute__((target("avx2"))) int64_t forward_avx2(float* x, float* pooled, const Window& o, int64_t c_count) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= c_count; c += 8) {
    __m256 m = zero;
    for (int i = 0; i < 4; ++i) {
      const __m256 r = _mm256_max_ps(zero, _mm256_loadu_ps(x + o[i] + c));
      _mm256_storeu_ps(x + o[i] + c, r);
      m = i == 0 ? r
                 : _mm256_blendv_ps(m, r, _mm256_or_ps(_mm256_cmp_ps(r, m, _CMP_GT_OQ),
                                                       _mm256_cmp_ps(r, r, _CMP_UNORD_Q)));
    }
    _mm256_storeu_ps(pooled + c, m);
  }
  return c;
}
#endif

// The widest window loop this CPU runs: 512, 256, or 0 where it has neither (the op
// then runs the separate ops, faster than the scalar loop). NST_FAST_CPU_WINDOWS=256
// or 0 narrows it, to test the narrower paths on a wider CPU.
int window_bits() {
  static const int bits = [] {
    int widest = 0;
#ifdef NST_FAST_X86_WINDOWS
    widest = __builtin_cpu_supports("avx512f") ? 512 : __builtin_cpu_supports("avx2") ? 256 : 0;
#endif
    const char* env = std::getenv("NST_FAST_CPU_WINDOWS");
    if (env != nullptr && std::atoi(env) < widest) widest = std::atoi(env) >= 256 ? 256 : 0;
    return widest;
  }();
  return bits;
}

// Positions no window covers (the last row or column of an odd size): the ReLU's
// backward of grad_act alone. n positions, `step` elements apart.
void uncovered(const float* act, const float* grad_act, float* out, int64_t n, int64_t step, int64_t c_count) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < c_count; ++c) {
      const int64_t o = i * step + c;
      out[o] = act[o] <= 0.f || grad_act == nullptr ? 0.f : grad_act[o];
    }
  }
}

// Window rows [row_begin, row_end), row r = b * (height / 2) + oh: input rows 2 oh and
// 2 oh + 1 of batch item b. act, out and grad_act (null: none) share one layout.
void relu_max_pool2_rows(const float* act, const float* grad_act, float* out, const float* pooled, Nhwc s,
                         Nhwc ps, int64_t height, int64_t width, int64_t channels, int64_t row_begin,
                         int64_t row_end) {
  const int64_t oh_count = height / 2, ow_count = width / 2;
  const int bits = window_bits();
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / oh_count, oh = r % oh_count;
    const int64_t base = b * s.b + 2 * oh * s.h;
    const float* ga = grad_act != nullptr ? grad_act + base : nullptr;
    for (int64_t ow = 0; ow < ow_count; ++ow) {
      const Window o = {base + 2 * ow * s.w, base + 2 * ow * s.w + s.w, base + 2 * ow * s.w + s.h,
                        base + 2 * ow * s.w + s.h + s.w};
      const float* g = pooled + b * ps.b + oh * ps.h + ow * ps.w;
      int64_t c = 0;
#ifdef NST_FAST_X86_WINDOWS
      if (bits == 512)
        c = window_avx512(act, grad_act, out, g, o, channels);
      else if (bits == 256)
        c = window_avx2(act, grad_act, out, g, o, channels);
#endif
      window_scalar(act, grad_act, out, g, o, c, channels);
    }
    if (width % 2 == 1) {  // the last column of both rows
      const int64_t last = base + (width - 1) * s.w;
      uncovered(act + last, ga ? ga + (width - 1) * s.w : nullptr, out + last, 2, s.h, channels);
    }
    if (height % 2 == 1 && oh == oh_count - 1) {  // the last row, after this item's last window row
      const int64_t row = b * s.b + (height - 1) * s.h;
      uncovered(act + row, grad_act ? grad_act + row : nullptr, out + row, width, s.w, channels);
    }
  }
}

// The ReLU alone at positions no window covers: n positions, `step` elements apart.
void relu_uncovered(float* x, int64_t n, int64_t step, int64_t c_count) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < c_count; ++c) {
      float& v = x[i * step + c];
      v = v > 0.f || v != v ? v : 0.f;
    }
  }
}

// The forward over window rows [row_begin, row_end), as relu_max_pool2_rows.
void relu_max_pool2_forward_rows(float* x, float* pooled, Nhwc s, Nhwc ps, int64_t height, int64_t width,
                                 int64_t channels, int64_t row_begin, int64_t row_end) {
  const int64_t oh_count = height / 2, ow_count = width / 2;
  const int bits = window_bits();
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / oh_count, oh = r % oh_count;
    const int64_t base = b * s.b + 2 * oh * s.h;
    for (int64_t ow = 0; ow < ow_count; ++ow) {
      const int64_t at = base + 2 * ow * s.w;
      const Window o = {at, at + s.w, at + s.h, at + s.h + s.w};
      float* p = pooled + b * ps.b + oh * ps.h + ow * ps.w;
      int64_t c = 0;
#ifdef NST_FAST_X86_WINDOWS
      if (bits == 512)
        c = forward_avx512(x, p, o, channels);
      else if (bits == 256)
        c = forward_avx2(x, p, o, channels);
#endif
      forward_scalar(x, p, o, c, channels);
    }
    if (width % 2 == 1) relu_uncovered(x + base + (width - 1) * s.w, 2, s.h, channels);
    if (height % 2 == 1 && oh == oh_count - 1) relu_uncovered(x + b * s.b + (height - 1) * s.h, width, s.w, channels);
  }
}

bool is_dense_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor relu_max_pool2_backward_cpu(const at::Tensor& grad_pooled, const at::Tensor& act,
                                       const c10::optional<at::Tensor>& grad_act) {
  check_relu_max_pool2_backward(grad_pooled, act, grad_act);
  const int64_t B = act.size(0), C = act.size(1), H = act.size(2), W = act.size(3);
  const bool accumulate = grad_act.has_value() && grad_act->defined();
  if (act.scalar_type() != at::kFloat || !is_dense_channels_last(act) || window_bits() == 0) {
    return relu_max_pool2_backward_separate(grad_pooled, act, grad_act);
  }
  auto out = at::empty_like(act);
  const at::Tensor pooled = grad_pooled.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor extra;
  if (accumulate) extra = grad_act->contiguous(at::MemoryFormat::ChannelsLast);
  const Nhwc s{act.stride(0), act.stride(2), act.stride(3)};
  const Nhwc ps{pooled.stride(0), pooled.stride(2), pooled.stride(3)};
  const float* a = act.data_ptr<float>();
  const float* g = accumulate ? extra.data_ptr<float>() : nullptr;
  const float* p = pooled.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, B * (H / 2), 1, [&](int64_t begin, int64_t end) {
    relu_max_pool2_rows(a, g, o, p, s, ps, H, W, C, begin, end);
  });
  return out;
}

at::Tensor relu_max_pool2_cpu(at::Tensor& x) {
  check_relu_max_pool2(x);
  if (x.scalar_type() != at::kFloat || !is_dense_channels_last(x) || window_bits() == 0) {
    return relu_max_pool2_separate_(x);
  }
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto pooled = at::empty({B, C, H / 2, W / 2}, x.options(), at::MemoryFormat::ChannelsLast);
  const Nhwc s{x.stride(0), x.stride(2), x.stride(3)};
  const Nhwc ps{pooled.stride(0), pooled.stride(2), pooled.stride(3)};
  float* xp = x.data_ptr<float>();
  float* pp = pooled.data_ptr<float>();
  at::parallel_for(0, B * (H / 2), 1, [&](int64_t begin, int64_t end) {
    relu_max_pool2_forward_rows(xp, pp, s, ps, H, W, C, begin, end);
  });
  return pooled;
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CPU, m) {
  m.impl("relu_max_pool2_", &relu_max_pool2_cpu);
  m.impl("relu_max_pool2_backward", &relu_max_pool2_backward_cpu);
}

}  // namespace nst_fast
