// CPU kernel of the loop's bookkeeping (nst_fast/loop_record.h).
#include <torch/library.h>

#include "nst_fast/loop_record_op.h"

namespace nst_fast {
namespace {

void loop_record_cpu(const at::Tensor& total, const at::Tensor& terms, const at::Tensor& weights, int64_t shown,
                     const at::Tensor& best_loss, const at::Tensor& bad_streak, const at::Tensor& row,
                     const at::Tensor& history, const at::Tensor& cursor, const at::Tensor& improved) {
  loop::record(record_args(total, terms, weights, shown, best_loss, bad_streak, row, history, cursor, improved));
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CPU, m) { m.impl("loop_record_", &loop_record_cpu); }

}  // namespace nst_fast
