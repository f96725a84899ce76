// The loop_record_ op's checks and arguments (loop_record_op.h).
#include "nst_fast/loop_record_op.h"

#include <c10/util/Exception.h>

#include <string>

namespace nst_fast {
namespace {

void check(const at::Tensor& t, const char* name, at::ScalarType type, int64_t numel, const at::Tensor& total) {
  TORCH_CHECK(t.scalar_type() == type && t.numel() == numel && t.is_contiguous() && t.device() == total.device(),
              "nst_fast.loop_record_: ", name, " must be a contiguous ", c10::toString(type), " tensor of ",
              std::to_string(numel), " elements on total's device");
}

}  // namespace

loop::Record record_args(const at::Tensor& total, const at::Tensor& terms, const at::Tensor& weights, int64_t shown,
                         const at::Tensor& best_loss, const at::Tensor& bad_streak, const at::Tensor& row,
                         const at::Tensor& history, const at::Tensor& cursor, const at::Tensor& improved) {
  const int64_t n = terms.numel();
  TORCH_CHECK(weights.dim() == 2 && weights.size(1) == n, "nst_fast.loop_record_: weights must be (a, ",
              std::to_string(n), ") for ", std::to_string(n), " terms");
  TORCH_CHECK(shown >= 0 && shown <= n, "nst_fast.loop_record_: shown must be in [0, ", std::to_string(n), "]");
  const int64_t cols = shown + weights.size(0) + 1;
  TORCH_CHECK(history.dim() == 2 && history.size(1) == cols && history.size(0) >= 1,
              "nst_fast.loop_record_: history must be (rows, ", std::to_string(cols), ")");
  check(total, "total", at::kFloat, 1, total);
  check(terms, "terms", at::kFloat, n, total);
  check(weights, "weights", at::kFloat, weights.numel(), total);
  check(best_loss, "best_loss", at::kFloat, 1, total);
  check(bad_streak, "bad_streak", at::kInt, 1, total);
  check(row, "row", at::kFloat, cols, total);
  check(history, "history", at::kFloat, history.numel(), total);
  check(cursor, "cursor", at::kLong, 1, total);
  check(improved, "improved", at::kBool, 1, total);
  loop::Record r;
  r.total = total.data_ptr<float>(), r.terms = terms.data_ptr<float>(), r.weights = weights.data_ptr<float>();
  r.n = n, r.shown = shown, r.sums = weights.size(0), r.rows = history.size(0);
  r.best_loss = best_loss.data_ptr<float>(), r.row = row.data_ptr<float>(), r.history = history.data_ptr<float>();
  r.bad_streak = bad_streak.data_ptr<int32_t>();
  r.cursor = cursor.data_ptr<int64_t>();
  r.improved = improved.data_ptr<bool>();
  return r;
}

}  // namespace nst_fast
