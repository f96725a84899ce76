// CPU kernels: the Gram matrix and residual in the accumulation dtype through
// BLAS, and the backward as a single GEMM D F instead of autograd's two (with the
// ReLU's backward: the gradient from above added in place, one buffer fewer).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include "nst_fast/style_loss.h"

namespace nst_fast {
namespace {

// The ATen calls below must not be autocast: the Gram matrix, residual and loss stay
// in the accumulation dtype under torch.autocast.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

bool is_channels_last(const at::Tensor& f) { return f.stride(1) == 1 && f.size(2) > 1; }

// Features in the accumulation dtype, keeping a channels-last layout if given.
at::Tensor accum_features(const at::Tensor& features) {
  auto f = features.to(accum_dtype(features.scalar_type()));
  if (f.stride(2) == 1 || is_channels_last(f)) return f;
  return f.contiguous();
}

at::Tensor gram_cpu(const at::Tensor& features) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_features(features);
  auto f = accum_features(features);
  return at::bmm(f, f.transpose(1, 2));
}

std::tuple<at::Tensor, at::Tensor> style_loss_forward_cpu(const at::Tensor& features,
                                                          const at::Tensor& target, double scale) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_features(features);
  check_gram_like("target", target, features);
  auto residual = gram_cpu(features);
  residual.sub_(target);
  auto flat = residual.reshape(-1);
  auto loss = at::dot(flat, flat).mul_(scale);
  return {loss, residual};
}

// g * 4 * s * D F in the accumulation dtype and in the layout of f (accum_features).
at::Tensor residual_product(const at::Tensor& grad_loss, const at::Tensor& residual, const at::Tensor& f,
                            double scale) {
  const double alpha = 4.0 * scale * grad_loss.item<double>();
  // alpha scales the C x C residual, not the C x M product: one pass less over dF.
  auto d = residual.mul(alpha);
  if (is_channels_last(f)) {
    // (F^T D)^T = D F since D is symmetric; this keeps the channels-last layout.
    return at::bmm(f.transpose(1, 2), d).transpose(1, 2);
  }
  return at::bmm(d, f);
}

at::Tensor style_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& residual,
                                   const at::Tensor& features, double scale) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_features(features);
  check_gram_like("residual", residual, features);
  check_grad_loss(grad_loss, features);
  return residual_product(grad_loss, residual, accum_features(features), scale).to(features.scalar_type());
}

at::Tensor style_loss_relu_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& residual,
                                        const at::Tensor& features, double scale,
                                        const c10::optional<at::Tensor>& grad_features) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_features(features);
  check_gram_like("residual", residual, features);
  check_grad_loss(grad_loss, features);
  const bool accumulate = grad_features.has_value() && grad_features->defined();
  if (accumulate) check_grad_features(*grad_features, features);
  // ATen's vectorised add and mask, the add in place: a fused loop over the three
  // tensors measured slower here (memory-bound either way).
  auto grad = residual_product(grad_loss, residual, accum_features(features), scale).to(features.scalar_type());
  if (accumulate) grad.add_(*grad_features);
  // In place: an output the size of relu1_1's activations would be fresh pages each step.
  return at::threshold_backward_out(grad, grad, features, 0);
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CPU, m) {
  m.impl("gram", &gram_cpu);
  m.impl("style_loss_forward", &style_loss_forward_cpu);
  m.impl("style_loss_backward", &style_loss_backward_cpu);
  m.impl("style_loss_relu_backward", &style_loss_relu_backward_cpu);
}

}  // namespace nst_fast
