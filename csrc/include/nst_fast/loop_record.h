#pragma once
// One step's bookkeeping of the optimisation loop (nst_fast/optimize/steps.py, LoopState.record)
// as one op, where PyTorch ops took eleven, each a kernel launch on a GPU:
//
//   loop_record_(total, terms, weights, shown, best_loss!, bad_streak!, row!, history!, cursor!, improved!)
//
//   improved   = total < best_loss                  (false for NaN)
//   best_loss  = improved ? total : best_loss
//   bad_streak = total finite ? 0 : bad_streak + 1
//   row        = [terms[:shown], weights @ terms, total]   (weights (a, n); sums in double)
//   history[min(cursor, rows - 1)] = row, then cursor += 1
//
// float32 losses, int32 bad_streak, int64 cursor (1,), bool improved. Shared by
// cpu/loop_record_cpu.cpp and cuda/loop_record_cuda.cu; one thread does it all (a
// row holds a few dozen values at most).
#include <cstdint>

#include "host_device.h"

namespace nst_fast {
namespace loop {

struct Record {
  const float *total, *terms, *weights;
  int64_t n, shown, sums, rows;  // terms, of them shown in the row, rows of weights, rows of history
  float *best_loss, *row, *history;
  int32_t* bad_streak;
  int64_t* cursor;
  bool* improved;
};

NST_HD inline void record(const Record& r) {
  const float total = *r.total;
  const bool finite = total - total == 0.f;  // false for inf and NaN
  const bool better = total < *r.best_loss;
  *r.improved = better;
  if (better) *r.best_loss = total;
  *r.bad_streak = finite ? 0 : *r.bad_streak + 1;
  for (int64_t c = 0; c < r.shown; ++c) r.row[c] = r.terms[c];
  for (int64_t i = 0; i < r.sums; ++i) {
    double s = 0.0;
    for (int64_t j = 0; j < r.n; ++j) s += double(r.weights[i * r.n + j]) * double(r.terms[j]);
    r.row[r.shown + i] = float(s);
  }
  const int64_t cols = r.shown + r.sums + 1;
  r.row[cols - 1] = total;
  const int64_t at = *r.cursor < r.rows - 1 ? *r.cursor : r.rows - 1;
  for (int64_t c = 0; c < cols; ++c) r.history[at * cols + c] = r.row[c];
  *r.cursor += 1;
}

}  // namespace loop
}  // namespace nst_fast
