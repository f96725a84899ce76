// Host side of the relu + 2x2 max pool ops on CUDA (nst_fast/relu_pool.h): one launch each
// on the current stream, no host synchronisation, so the step can be captured.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "nst_fast/relu_pool.h"
#include "relu_pool_kernels.cuh"

namespace nst_fast {
namespace {

using namespace kernels::pool_k;

Strided strided(const at::Tensor& t) {
  Strided s;
  for (int d = 0; d < 4; ++d) s.size[d] = t.size(d), s.stride[d] = t.stride(d);
  s.data = t.data_ptr();
  return s;
}

// f(T()) with T the CUDA type of a float32, bfloat16 or float16 tensor.
template <typename F>
void with_cuda_type(at::ScalarType type, F&& f) {
  if (type == at::kFloat)
    f(float());
  else if (type == at::kBFloat16)
    f(__nv_bfloat16());
  else
    f(__half());
}

bool kernel_takes(const at::Tensor& t) {
  const auto type = t.scalar_type();
  return (type == at::kFloat || type == at::kBFloat16 || type == at::kHalf) && relu_pool_dense(t);
}

at::Tensor relu_max_pool2_cuda(at::Tensor& x) {
  check_relu_max_pool2(x);
  if (!kernel_takes(x)) return relu_max_pool2_separate_(x);
  const c10::cuda::CUDAGuard guard(x.device());
  auto pooled = at::empty({x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2}, x.options(), relu_pool_format(x));
  if (x.numel() == 0) return pooled;
  const Strided xs = strided(x), ps = strided(pooled);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_cuda_type(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const Launch l = plan_launch<T>(xs, ps, {&xs, &ps});
    auto* xp = static_cast<T*>(x.data_ptr());
    auto* pp = static_cast<T*>(pooled.data_ptr());
    with_width<T>(l.v, [&](auto v) {
      relu_max_pool2_kernel<T, decltype(v)::value><<<l.blocks, kThreads, 0, stream>>>(xp, pp, l.g);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return pooled;
}

// t with like's strides (copied only where they differ).
at::Tensor with_layout(const at::Tensor& t, const at::Tensor& like) {
  return t.strides() == like.strides() ? t : at::empty_like(like).copy_(t);
}

at::Tensor relu_max_pool2_backward_cuda(const at::Tensor& grad_pooled, const at::Tensor& act,
                                        const c10::optional<at::Tensor>& grad_act) {
  check_relu_max_pool2_backward(grad_pooled, act, grad_act);
  if (!kernel_takes(act)) return relu_max_pool2_backward_separate(grad_pooled, act, grad_act);
  const c10::cuda::CUDAGuard guard(act.device());
  auto out = at::empty_like(act);
  if (act.numel() == 0) return out;
  const at::Tensor gp = grad_pooled.contiguous(relu_pool_format(act));
  at::Tensor extra;
  if (grad_act.has_value() && grad_act->defined()) extra = with_layout(*grad_act, act);
  const Strided as = strided(act), gs = strided(gp), os = strided(out);
  const Strided es = extra.defined() ? strided(extra) : as;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_cuda_type(act.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const Launch l = plan_launch<T>(as, gs, {&as, &gs, &os, extra.defined() ? &es : nullptr});
    const auto* ap = static_cast<const T*>(act.data_ptr());
    const auto* gpp = static_cast<const T*>(gp.data_ptr());
    const auto* ep = extra.defined() ? static_cast<const T*>(extra.data_ptr()) : nullptr;
    auto* op = static_cast<T*>(out.data_ptr());
    with_width<T>(l.v, [&](auto v) {
      relu_max_pool2_backward_kernel<T, decltype(v)::value><<<l.blocks, kThreads, 0, stream>>>(ap, gpp, ep, op, l.g);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CUDA, m) {
  m.impl("relu_max_pool2_", &relu_max_pool2_cuda);
  m.impl("relu_max_pool2_backward", &relu_max_pool2_backward_cuda);
}

}  // namespace nst_fast
