#pragma once
// The fused L-BFGS step (nst_fast.ops.reference.lbfgs_step in four passes instead of ~120
// small ops). Shared by cpu/lbfgs_cpu.cpp and cuda/lbfgs_cuda.cu:
//
//   1. dots   over the n elements, per block: s = x - x_a, y = g - g_a and the inner
//             products of every row of W with s, y and g, plus s.s, s.y, y.y, s.g,
//             y.g, g.g, |g|_1, g_a.d and the count of non-finite g.
//   2. plan   one thread: the block sums reduced in a fixed order, accept or
//             backtrack, the history update (W W^T, valid, idx) and the new
//             direction's coefficients by the compact form (lbfgs_plan below).
//   3. direction (accepted steps only) d = -(gamma g + W^T coef), or -g on a reset,
//             the pushed pair written into W, x_a = x, g_a = g, per-block max |d|.
//   4. move   t from the plan and max |d|, then x = x_a + t d.
//
// Sums across chunks and blocks are in double whatever the state's dtype (on the GPU
// every product too; the CPU sums a chunk in the state's dtype, vectorised), and the
// per-block partial sums are reduced in block order, so a step is deterministic.
#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace nst_fast {
namespace lbfgs {

constexpr int64_t kChunk = 1024;      // elements a block handles at a time (256 threads x 4)
constexpr int64_t kMaxBlocks = 1024;  // blocks of the dots, direction and move passes
constexpr int kMaxHistory = 32;       // W W^T (2h x 2h doubles) must fit a block's shared memory

// Per-block partial sums: 2h products with s, with y, with g, then these scalars.
enum Scalar { kSS, kSY, kYY, kSG, kYG, kGG, kGAbs, kGaD, kNonFinite, kScalars };
// The plan, after the partial sums: whether the step was accepted, pushed a pair, fell
// back to steepest descent, the slot written, gamma, t before the max_step bound, coef[2h].
enum Plan { kOk, kPush, kReset, kSlot, kGamma, kNewT, kPlanHead };

NST_HD inline bool finite(double v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

NST_HD inline int64_t blocks(int64_t n) {
  int64_t b = (n + kChunk - 1) / kChunk;
  return b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b);
}
NST_HD inline int64_t partial_width(int64_t h) { return 6 * h + kScalars; }

// workspace (float64): [blocks][partial_width] sums, [blocks] max |d|, then the plan.
struct Workspace {
  double* partial;
  double* dmax;
  double* plan;
  NST_HD Workspace(double* base, int64_t n, int64_t h)
      : partial(base), dmax(base + blocks(n) * partial_width(h)), plan(dmax + blocks(n)) {}
};
inline int64_t workspace_size(int64_t n, int64_t h) {
  return blocks(n) * (partial_width(h) + 1) + kPlanHead + 2 * h;
}

struct Params {
  double lr, c1, backtrack, eps, max_step;
};

// The state the plan reads and updates, as doubles / integers (the callers round
// f_a and t to the state's dtype when they store them).
struct Scalars {
  double f_a, t;
  int64_t idx, steps, accepted;
};

// Step 2. sums: the partial sums reduced; f: the loss at x; WW (2h x 2h, row-major)
// and valid (h) are updated in place with the pushed pair. Writes plan[kPlanHead + 2h].
// The direction is the compact form of Byrd, Nocedal and Schnabel (1994, eq. 3.1), as
// lbfgs_direction in nst_fast/ops/reference.py, with the pairs oldest first.
NST_HD inline void lbfgs_plan(const double* sums, double f, const Params& p, int h, double* WW, bool* valid,
                              Scalars& st, double* plan) {
  const int H = 2 * h;
  const double* Ws = sums;
  const double* Wy = sums + H;
  const double* Wg_old = sums + 2 * H;
  const double* sc = sums + 3 * H;
  const bool first = st.accepted == 0;
  const bool finite_point = finite(f) && sc[kNonFinite] == 0.0;
  const bool armijo = f <= st.f_a + p.c1 * st.t * sc[kGaD];
  const bool ok = finite_point && (first || armijo);
  const bool push = ok && !first && sc[kSY] > p.eps;
  const int slot = static_cast<int>(st.idx);
  plan[kOk] = ok;
  plan[kPush] = push;
  plan[kSlot] = slot;
  plan[kReset] = 0;
  st.steps += 1;
  if (push) {
    const int ys = h + slot;
    for (int r = 0; r < H; ++r) {
      if (r == slot || r == ys) continue;
      WW[r * H + slot] = WW[slot * H + r] = Ws[r];
      WW[r * H + ys] = WW[ys * H + r] = Wy[r];
    }
    WW[slot * H + slot] = sc[kSS];
    WW[slot * H + ys] = WW[ys * H + slot] = sc[kSY];
    WW[ys * H + ys] = sc[kYY];
    valid[slot] = true;
    st.idx = (st.idx + 1) % h;
  }
  if (!ok) {
    st.t *= p.backtrack;
    return;
  }
  st.f_a = f;
  st.accepted += 1;

  double Wg[2 * kMaxHistory], v[kMaxHistory], q[kMaxHistory];
  int order[kMaxHistory] = {};
  for (int r = 0; r < H; ++r) Wg[r] = Wg_old[r];
  if (push) {
    Wg[slot] = sc[kSG];
    Wg[h + slot] = sc[kYG];
  }
  for (int k = 0; k < h; ++k) order[k] = static_cast<int>((st.idx + k) % h);
  auto SY = [&](int i, int j) { return WW[order[i] * H + h + order[j]]; };
  auto YY = [&](int i, int j) { return WW[(h + order[i]) * H + h + order[j]]; };
  // R: the upper triangle of S'Y, with a unit diagonal for slots never written.
  auto R = [&](int i, int j) { return SY(i, j) + (i == j && !valid[order[i]] ? 1.0 : 0.0); };
  const double gamma = valid[order[h - 1]] ? SY(h - 1, h - 1) / YY(h - 1, h - 1) : 1.0;
  for (int i = h - 1; i >= 0; --i) {  // R v = S'g
    double acc = Wg[order[i]];
    for (int j = i + 1; j < h; ++j) acc -= R(i, j) * v[j];
    v[i] = acc / R(i, i);
  }
  for (int i = 0; i < h; ++i) {  // q = (D + gamma Y'Y) v - gamma Y'g
    double yv = 0.0;
    for (int j = 0; j < h; ++j) yv += YY(i, j) * v[j];
    q[i] = SY(i, i) * v[i] + gamma * (yv - Wg[h + order[i]]);
  }
  for (int i = 0; i < h; ++i) {  // R' p = q, p in q
    double acc = q[i];
    for (int j = 0; j < i; ++j) acc -= R(j, i) * q[j];
    q[i] = acc / R(i, i);
  }
  double* coef = plan + kPlanHead;
  double gd = gamma * sc[kGG];  // -(g . d) = g . (gamma g + W' coef)
  for (int k = 0; k < h; ++k) {
    coef[order[k]] = q[k];
    coef[h + order[k]] = -gamma * v[k];
    gd += q[k] * Wg[order[k]] - gamma * v[k] * Wg[h + order[k]];
  }
  const bool reset = !(-gd < 0.0);  // not a descent direction (or NaN): steepest descent
  const double inv = 1.0 / sc[kGAbs];
  const double t0 = (inv < 1.0 ? inv : 1.0) * p.lr;
  plan[kReset] = reset;
  plan[kGamma] = gamma;
  plan[kNewT] = (first || reset) ? t0 : p.lr;
}

// Step 4: t once max |d| is known (accepted steps; a rejected one keeps the plan's).
NST_HD inline double bounded_t(const double* plan, double dmax, const Params& p) {
  const double bound = p.max_step / dmax;
  return plan[kNewT] < bound ? plan[kNewT] : bound;
}

}  // namespace lbfgs
}  // namespace nst_fast
