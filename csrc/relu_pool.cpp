// The separate ATen ops that the relu + max pool kernels stand for (relu_pool.h): the
// layouts the kernels do not take run these, on either device.
#include "nst_fast/relu_pool.h"

#include <ATen/ATen.h>

namespace nst_fast {

at::Tensor relu_max_pool2_separate_(at::Tensor& x) {
  at::relu_(x);
  return at::max_pool2d(x, {2, 2}, {2, 2}).contiguous(relu_pool_format(x));
}

at::Tensor relu_max_pool2_backward_separate(const at::Tensor& grad_pooled, const at::Tensor& act,
                                            const c10::optional<at::Tensor>& grad_act) {
  auto pooled = at::max_pool2d_with_indices(act, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false);
  auto grad = at::max_pool2d_with_indices_backward(grad_pooled, act, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false,
                                                   std::get<1>(pooled));
  if (grad_act.has_value() && grad_act->defined()) grad = grad + *grad_act;
  return at::threshold_backward(grad, act, 0);
}

bool relu_pool_dense(const at::Tensor& t) {
  return t.dim() == 4 && (t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast));
}

at::MemoryFormat relu_pool_format(const at::Tensor& x) {
  return x.size(1) > 1 && x.stride(1) == 1 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace nst_fast
