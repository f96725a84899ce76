// Host side of the fused L-BFGS step on CUDA (nst_fast/lbfgs.h): four launches on the
// current stream, no host synchronisation and no allocation, so it can be captured.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "nst_fast/lbfgs_op.h"
#include "lbfgs_kernels.cuh"

namespace nst_fast {
namespace {

using namespace kernels::lbfgs_k;

template <typename T>
void run(const LbfgsArgs& a, const Params& p) {
  const c10::cuda::CUDAGuard guard(a.x.device());
  const at::Tensor &x = a.x, &valid = a.valid;
  const int64_t n = x.numel();
  const int h = static_cast<int>(valid.numel());
  const int nblocks = static_cast<int>(blocks(n));
  Workspace ws(a.workspace.data_ptr<double>(), n, h);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  T* xp = x.data_ptr<T>();
  T* xa = a.x_a.data_ptr<T>();
  T* ga = a.g_a.data_ptr<T>();
  T* dp = a.d.data_ptr<T>();
  T* wp = a.W.data_ptr<T>();
  const T* gp = a.grad.data_ptr<T>();

  dots_kernel<T><<<nblocks, kThreads, 0, stream>>>(xp, xa, gp, ga, dp, wp, n, h, ws.partial);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  plan_kernel<T><<<1, kThreads, plan_smem_bytes(h), stream>>>(
      ws.partial, nblocks, h, a.loss.data_ptr<T>(), a.f_a.data_ptr<T>(), a.t.data_ptr<T>(), a.WW.data_ptr<double>(),
      valid.data_ptr<bool>(), a.idx.data_ptr<int64_t>(), a.steps.data_ptr<int64_t>(),
      a.accepted.data_ptr<int64_t>(), ws.plan, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  direction_kernel<T><<<nblocks, kThreads, 0, stream>>>(xp, xa, gp, ga, dp, wp, n, h, ws.plan, ws.dmax);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  move_kernel<T><<<nblocks, kThreads, 0, stream>>>(xp, xa, dp, n, ws.plan, ws.dmax, nblocks, a.t.data_ptr<T>(),
                                                   p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CUDA, m) { m.impl("lbfgs_step", &lbfgs_step_op<run<float>, run<double>>); }

}  // namespace nst_fast
