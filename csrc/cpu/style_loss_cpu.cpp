// CPU kernels: the Gram matrix and residual in the accumulation dtype through
// BLAS, and the backward as a single GEMM D F instead of autograd's two (with the
// ReLU's backward: in float32 one pass over that product instead of an add and a
// threshold, and two buffers fewer).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include "../style_loss.h"
#include "clones.h"

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

// d_out = act <= 0 ? 0 : grad_in + d_out over [lo, hi), masked as threshold_backward
// masks (a NaN activation keeps its gradient). One pointer for d and out, so that the
// compiler vectorises the loop (a select, not a branch the random mask mispredicts)
// without an aliasing check that out == d would fail.
template <typename T>
NST_FAST_INLINE void relu_accumulate_in_place(T* __restrict__ d_out, const T* __restrict__ grad_in,
                                              const T* __restrict__ act, int64_t lo, int64_t hi) {
  if (grad_in != nullptr) {
    for (int64_t i = lo; i < hi; ++i) {
      const T v = d_out[i] + grad_in[i];
      d_out[i] = act[i] <= T(0) ? T(0) : v;
    }
  } else {
    for (int64_t i = lo; i < hi; ++i) d_out[i] = act[i] <= T(0) ? T(0) : d_out[i];
  }
}

NST_FAST_CLONES void relu_accumulate_in_place_float(float* d_out, const float* grad_in, const float* act,
                                                    int64_t lo, int64_t hi) {
  relu_accumulate_in_place(d_out, grad_in, act, lo, hi);
}

NST_FAST_CLONES void relu_accumulate_in_place_double(double* d_out, const double* grad_in, const double* act,
                                                     int64_t lo, int64_t hi) {
  relu_accumulate_in_place(d_out, grad_in, act, lo, hi);
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
  auto d = residual_product(grad_loss, residual, accum_features(features), scale);
  if (d.scalar_type() != features.scalar_type()) {
    // bfloat16, float16: the separate ops themselves, ATen's vectorised conversion, add
    // and mask (a scalar loop converting each element was slower).
    auto grad = d.to(features.scalar_type());
    if (accumulate) grad.add_(*grad_features);
    return at::threshold_backward(grad, features, 0);
  }
  // In place on d, with the ReLU output and the incoming gradient in d's (dense)
  // layout: one flat index then walks all three.
  auto like_d = [&](const at::Tensor& t) { return t.strides() == d.strides() ? t : at::empty_like(d).copy_(t); };
  const at::Tensor act = like_d(features);
  const at::Tensor grad_in = accumulate ? like_d(*grad_features) : at::Tensor();
  if (d.scalar_type() == at::kDouble) {
    const double* g = accumulate ? grad_in.data_ptr<double>() : nullptr;
    at::parallel_for(0, d.numel(), 1 << 14, [&](int64_t lo, int64_t hi) {
      relu_accumulate_in_place_double(d.data_ptr<double>(), g, act.data_ptr<double>(), lo, hi);
    });
  } else {
    const float* g = accumulate ? grad_in.data_ptr<float>() : nullptr;
    at::parallel_for(0, d.numel(), 1 << 14, [&](int64_t lo, int64_t hi) {
      relu_accumulate_in_place_float(d.data_ptr<float>(), g, act.data_ptr<float>(), lo, hi);
    });
  }
  return d;
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CPU, m) {
  m.impl("gram", &gram_cpu);
  m.impl("style_loss_forward", &style_loss_forward_cpu);
  m.impl("style_loss_backward", &style_loss_backward_cpu);
  m.impl("style_loss_relu_backward", &style_loss_relu_backward_cpu);
}

}  // namespace nst_fast
