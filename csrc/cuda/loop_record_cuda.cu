// CUDA kernel of the loop's bookkeeping (nst_fast/loop_record.h): one thread, one launch on
// the current stream, no host synchronisation, so the step can be captured.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "nst_fast/loop_record_op.h"

namespace nst_fast {
namespace {

__global__ void loop_record_kernel(loop::Record r) { loop::record(r); }

void loop_record_cuda(const at::Tensor& total, const at::Tensor& terms, const at::Tensor& weights, int64_t shown,
                      const at::Tensor& best_loss, const at::Tensor& bad_streak, const at::Tensor& row,
                      const at::Tensor& history, const at::Tensor& cursor, const at::Tensor& improved) {
  const loop::Record r =
      record_args(total, terms, weights, shown, best_loss, bad_streak, row, history, cursor, improved);
  const c10::cuda::CUDAGuard guard(total.device());
  loop_record_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(r);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CUDA, m) { m.impl("loop_record_", &loop_record_cuda); }

}  // namespace nst_fast
