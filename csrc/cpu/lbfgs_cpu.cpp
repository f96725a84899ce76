// CPU kernel of the fused L-BFGS step (nst_fast/lbfgs.h): the same passes as the CUDA
// kernels over the same blocks, run by at::parallel_for. Within a chunk of kChunk
// elements the sums are in the state's dtype (vectorised); across chunks in double.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "nst_fast/lbfgs_op.h"
#include "clones.h"

namespace nst_fast {
namespace {

using namespace lbfgs;

template <typename T>
struct State {
  int64_t n, h;
  T *x, *x_a, *g_a, *d, *W;
  const T* g;
};

// Pass 1 over elements [lo, lo + len): adds W s, W y, W g and the scalars to out.
template <typename T>
NST_FAST_INLINE void dots_chunk(const State<T>& st, int64_t lo, int64_t len, double* out) {
  const int64_t H = 2 * st.h;
  T s[kChunk], y[kChunk];
  const T *x = st.x + lo, *x_a = st.x_a + lo, *g = st.g + lo, *g_a = st.g_a + lo, *d = st.d + lo;
  T ss = 0, sy = 0, yy = 0, sg = 0, yg = 0, gg = 0, gabs = 0, gad = 0, bad = 0;
#pragma omp simd reduction(+ : ss, sy, yy, sg, yg, gg, gabs, gad, bad)
  for (int64_t i = 0; i < len; ++i) {
    s[i] = x[i] - x_a[i];
    y[i] = g[i] - g_a[i];
    ss += s[i] * s[i], sy += s[i] * y[i], yy += y[i] * y[i];
    sg += s[i] * g[i], yg += y[i] * g[i], gg += g[i] * g[i];
    gabs += std::fabs(g[i]);
    gad += g_a[i] * d[i];
    bad += g[i] - g[i] == T(0) ? T(0) : T(1);  // NaN for inf and NaN; isfinite would not vectorise
  }
  double* sc = out + 3 * H;
  sc[kSS] += ss, sc[kSY] += sy, sc[kYY] += yy, sc[kSG] += sg, sc[kYG] += yg, sc[kGG] += gg;
  sc[kGAbs] += gabs, sc[kGaD] += gad, sc[kNonFinite] += bad;
  for (int64_t r = 0; r < H; ++r) {
    const T* w = st.W + r * st.n + lo;
    T ws = 0, wy = 0, wg = 0;
#pragma omp simd reduction(+ : ws, wy, wg)
    for (int64_t i = 0; i < len; ++i) ws += w[i] * s[i], wy += w[i] * y[i], wg += w[i] * g[i];
    out[r] += ws, out[H + r] += wy, out[2 * H + r] += wg;
  }
}

// Pass 3 over elements [lo, lo + len) of an accepted step; returns max |d| there.
template <typename T>
NST_FAST_INLINE double direction_chunk(const State<T>& st, const double* plan, int64_t lo, int64_t len) {
  const int64_t h = st.h, n = st.n;
  const bool push = plan[kPush] != 0, reset = plan[kReset] != 0;
  const int64_t slot = static_cast<int64_t>(plan[kSlot]);
  const T gamma = T(plan[kGamma]);
  const double* coef = plan + kPlanHead;
  T acc[kChunk], s[kChunk], y[kChunk];
  const T *x = st.x + lo, *g = st.g + lo;
  T *x_a = st.x_a + lo, *g_a = st.g_a + lo, *d = st.d + lo;
  for (int64_t i = 0; i < len; ++i) s[i] = x[i] - x_a[i], y[i] = g[i] - g_a[i], acc[i] = gamma * g[i];
  for (int64_t r = 0; r < 2 * h && !reset; ++r) {
    const T k = T(coef[r]);
    const T* w = push && r == slot ? s : push && r == h + slot ? y : st.W + r * n + lo;
    for (int64_t i = 0; i < len; ++i) acc[i] += k * w[i];
  }
  if (push) {
    std::copy(s, s + len, st.W + slot * n + lo);
    std::copy(y, y + len, st.W + (h + slot) * n + lo);
  }
  T dmax = 0;
  for (int64_t i = 0; i < len; ++i) {
    d[i] = reset ? -g[i] : -acc[i];
    x_a[i] = x[i];
    g_a[i] = g[i];
    dmax = std::max(dmax, std::fabs(d[i]));
  }
  return dmax;
}

template <typename T>
NST_FAST_INLINE void move_range(const State<T>& st, int64_t lo, int64_t hi, T t) {
  for (int64_t e = lo; e < hi; ++e) st.x[e] = st.x_a[e] + t * st.d[e];
}

NST_FAST_CLONES void dots_f(const State<float>& st, int64_t lo, int64_t len, double* out) {
  dots_chunk(st, lo, len, out);
}
NST_FAST_CLONES void dots_d(const State<double>& st, int64_t lo, int64_t len, double* out) {
  dots_chunk(st, lo, len, out);
}
NST_FAST_CLONES double direction_f(const State<float>& st, const double* plan, int64_t lo, int64_t len) {
  return direction_chunk(st, plan, lo, len);
}
NST_FAST_CLONES double direction_d(const State<double>& st, const double* plan, int64_t lo, int64_t len) {
  return direction_chunk(st, plan, lo, len);
}
NST_FAST_CLONES void move_f(const State<float>& st, int64_t lo, int64_t hi, float t) { move_range(st, lo, hi, t); }
NST_FAST_CLONES void move_d(const State<double>& st, int64_t lo, int64_t hi, double t) { move_range(st, lo, hi, t); }

void dots(const State<float>& st, int64_t lo, int64_t len, double* out) { dots_f(st, lo, len, out); }
void dots(const State<double>& st, int64_t lo, int64_t len, double* out) { dots_d(st, lo, len, out); }
double direction(const State<float>& st, const double* plan, int64_t lo, int64_t len) {
  return direction_f(st, plan, lo, len);
}
double direction(const State<double>& st, const double* plan, int64_t lo, int64_t len) {
  return direction_d(st, plan, lo, len);
}
void move(const State<float>& st, int64_t lo, int64_t hi, float t) { move_f(st, lo, hi, t); }
void move(const State<double>& st, int64_t lo, int64_t hi, double t) { move_d(st, lo, hi, t); }

// Block b's chunks: b, b + nblocks, ... as on the GPU.
template <typename F>
void for_each_chunk(int64_t b, int64_t nblocks, int64_t n, F&& f) {
  for (int64_t c = b; c * kChunk < n; c += nblocks) f(c * kChunk, std::min(kChunk, n - c * kChunk));
}

template <typename T>
void run(const LbfgsArgs& a, const Params& p) {
  const at::Tensor &x = a.x, &f_a = a.f_a, &t = a.t, &valid = a.valid, &idx = a.idx, &steps = a.steps,
                   &accepted = a.accepted;
  const int64_t n = x.numel(), h = valid.numel(), nblocks = blocks(n), width = partial_width(h);
  const State<T> st{n, h, x.data_ptr<T>(), a.x_a.data_ptr<T>(), a.g_a.data_ptr<T>(), a.d.data_ptr<T>(),
                    a.W.data_ptr<T>(), a.grad.data_ptr<T>()};
  Workspace ws(a.workspace.data_ptr<double>(), n, h);
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* out = ws.partial + b * width;
      std::fill(out, out + width, 0.0);
      for_each_chunk(b, nblocks, n, [&](int64_t lo, int64_t len) { dots(st, lo, len, out); });
    }
  });
  std::vector<double> sums(width, 0.0);
  for (int64_t b = 0; b < nblocks; ++b)
    for (int64_t k = 0; k < width; ++k) sums[k] += ws.partial[b * width + k];
  Scalars sc{double(f_a.item<T>()), double(t.item<T>()), idx.item<int64_t>(), steps.item<int64_t>(),
             accepted.item<int64_t>()};
  lbfgs_plan(sums.data(), double(a.loss.item<T>()), p, static_cast<int>(h), a.WW.data_ptr<double>(),
             valid.data_ptr<bool>(), sc, ws.plan);
  f_a.fill_(T(sc.f_a));
  idx.fill_(sc.idx);
  steps.fill_(sc.steps);
  accepted.fill_(sc.accepted);
  T step_t = T(sc.t);
  if (ws.plan[kOk] != 0) {
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double m = 0.0;
        for_each_chunk(b, nblocks, n,
                       [&](int64_t lo, int64_t len) { m = std::max(m, direction(st, ws.plan, lo, len)); });
        ws.dmax[b] = m;
      }
    });
    step_t = T(bounded_t(ws.plan, *std::max_element(ws.dmax, ws.dmax + nblocks), p));
  }
  t.fill_(step_t);
  at::parallel_for(0, n, kChunk, [&](int64_t lo, int64_t hi) { move(st, lo, hi, step_t); });
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CPU, m) { m.impl("lbfgs_step", &lbfgs_step_op<run<float>, run<double>>); }

}  // namespace nst_fast
