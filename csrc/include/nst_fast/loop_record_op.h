#pragma once
// The loop_record_ op's arguments (loop_record.h has what it does), checked and as the
// kernels take them; defined in loop_record_op.cpp, shared by the CPU and CUDA kernels.
#include <torch/types.h>

#include "loop_record.h"

namespace nst_fast {

loop::Record record_args(const at::Tensor& total, const at::Tensor& terms, const at::Tensor& weights, int64_t shown,
                         const at::Tensor& best_loss, const at::Tensor& bad_streak, const at::Tensor& row,
                         const at::Tensor& history, const at::Tensor& cursor, const at::Tensor& improved);

}  // namespace nst_fast
