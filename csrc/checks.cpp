// Argument checks of the nst_fast ops (declared in style_loss.h and relu_pool.h).
#include "nst_fast/style_loss.h"

#include "nst_fast/relu_pool.h"

#include "nst_fast/lbfgs_op.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>
#include <utility>

namespace nst_fast {
namespace {
// Integers go into messages as strings: streaming int64_t through c10::str crashed
// the process on the torch 2.11 device build.
std::string num(int64_t v) { return std::to_string(v); }
std::string dims(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + num(t.size(d));
  return s + "]";
}
}  // namespace

void check_features(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 3,
              "nst_fast: features must be (B, C, M), got ", num(features.dim()), " dims");
  auto t = features.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
              "nst_fast: features must be float32, float64, bfloat16 or float16, got ", t);
}

void check_gram_like(const char* name, const at::Tensor& gram, const at::Tensor& features) {
  TORCH_CHECK(gram.device() == features.device(), "nst_fast: ", name, " is on ", gram.device(),
              " but features are on ", features.device());
  TORCH_CHECK(gram.dim() == 3 && gram.size(1) == features.size(1) && gram.size(2) == features.size(1),
              "nst_fast: ", name, " must be (B, C, C) with C = ", num(features.size(1)), ", got ",
              dims(gram));
  TORCH_CHECK(gram.size(0) == features.size(0),
              "nst_fast: ", name, " batch ", num(gram.size(0)), " does not match features batch ",
              num(features.size(0)));
  TORCH_CHECK(gram.scalar_type() == accum_dtype(features.scalar_type()),
              "nst_fast: ", name, " must be ", accum_dtype(features.scalar_type()), ", got ",
              gram.scalar_type());
}

void check_grad_loss(const at::Tensor& grad_loss, const at::Tensor& features) {
  TORCH_CHECK(grad_loss.numel() == 1, "nst_fast: grad_loss must hold one value, got ", num(grad_loss.numel()));
  TORCH_CHECK(grad_loss.device() == features.device(), "nst_fast: grad_loss is on ", grad_loss.device(),
              " but features are on ", features.device());
}

void check_grad_features(const at::Tensor& grad_features, const at::Tensor& features) {
  TORCH_CHECK(grad_features.sizes() == features.sizes(), "nst_fast: grad_features must have the features' shape ",
              dims(features), ", got ", dims(grad_features));
  TORCH_CHECK(grad_features.scalar_type() == features.scalar_type(), "nst_fast: grad_features must be ",
              features.scalar_type(), " as the features are, got ", grad_features.scalar_type());
  TORCH_CHECK(grad_features.device() == features.device(), "nst_fast: grad_features is on ",
              grad_features.device(), " but features are on ", features.device());
}

void check_cuda_features(const char* op, const at::Tensor& features) {
  TORCH_CHECK(features.is_cuda(), "nst_fast.", op, ": features must be a CUDA tensor, got ",
              features.device());
  check_features(features);
  TORCH_CHECK(features.size(1) < (1LL << 31) && features.size(2) < (1LL << 31) && features.size(0) <= 65535,
              "nst_fast.", op, ": features too large: ", dims(features));
}

void check_winograd_args(const at::Tensor& input, const at::Tensor& weight_transform,
                         const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.dim() == 4, "nst_fast.conv3x3_winograd: input must be (N, C, H, W), got ", dims(input));
  auto t = input.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16,
              "nst_fast.conv3x3_winograd: input must be float32, float64 or bfloat16, got ", t);
  if (t == at::kBFloat16) {
    TORCH_CHECK(input.size(1) % 2 == 0 && weight_transform.dim() == 4 && weight_transform.size(0) == 36 &&
                    weight_transform.size(1) * 2 == input.size(1) && weight_transform.size(3) == 2,
                "nst_fast.conv3x3_winograd: bfloat16 needs an even C and weight_transform packed as "
                "(36, C / 2, K, 2) with C = ", num(input.size(1)), ", got ", dims(weight_transform));
  } else {
    TORCH_CHECK(weight_transform.dim() == 3 && weight_transform.size(0) == 36 &&
                    weight_transform.size(1) == input.size(1),
                "nst_fast.conv3x3_winograd: weight_transform must be (36, C, K) with C = ", num(input.size(1)),
                ", got ", dims(weight_transform));
  }
  TORCH_CHECK(weight_transform.scalar_type() == t && weight_transform.device() == input.device(),
              "nst_fast.conv3x3_winograd: weight_transform must match the input's dtype and device");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight_transform.size(2) &&
                    bias->scalar_type() == t && bias->device() == input.device(),
                "nst_fast.conv3x3_winograd: bias must be (K,) with K = ", num(weight_transform.size(2)),
                " and the input's dtype and device, got ", dims(*bias));
  }
}

void check_relu_max_pool2(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(2) >= 2 && x.size(3) >= 2,
              "nst_fast.relu_max_pool2_: x must be (B, C, H, W) with H, W >= 2, got ", dims(x));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "nst_fast.relu_max_pool2_: x must be a float tensor, got ",
              x.scalar_type());
}

void check_relu_max_pool2_backward(const at::Tensor& grad_pooled, const at::Tensor& act,
                                   const c10::optional<at::Tensor>& grad_act) {
  const char* op = "nst_fast.relu_max_pool2_backward: ";
  TORCH_CHECK(act.dim() == 4 && act.size(2) >= 2 && act.size(3) >= 2, op,
              "act must be (B, C, H, W) with H, W >= 2, got ", dims(act));
  TORCH_CHECK(at::isFloatingType(act.scalar_type()), op, "act must be a float tensor, got ", act.scalar_type());
  TORCH_CHECK(grad_pooled.dim() == 4 && grad_pooled.size(0) == act.size(0) && grad_pooled.size(1) == act.size(1) &&
                  grad_pooled.size(2) == act.size(2) / 2 && grad_pooled.size(3) == act.size(3) / 2,
              op, "grad_pooled must be (B, C, H / 2, W / 2) of act ", dims(act), ", got ", dims(grad_pooled));
  TORCH_CHECK(grad_pooled.scalar_type() == act.scalar_type() && grad_pooled.device() == act.device(), op,
              "grad_pooled must have act's dtype and device");
  if (grad_act.has_value() && grad_act->defined()) {
    TORCH_CHECK(grad_act->sizes() == act.sizes() && grad_act->scalar_type() == act.scalar_type() &&
                    grad_act->device() == act.device(),
                op, "grad_act must have act's shape and dtype, on its device: act is ", dims(act), ", grad_act ",
                dims(*grad_act));
  }
}

void check_lbfgs_args(const LbfgsArgs& a) {
  const at::Tensor &x = a.x, &loss = a.loss, &grad = a.grad, &x_a = a.x_a, &f_a = a.f_a, &g_a = a.g_a, &d = a.d,
                   &t = a.t, &W = a.W, &WW = a.WW, &valid = a.valid, &idx = a.idx, &steps = a.steps,
                   &accepted = a.accepted, &workspace = a.workspace;
  const char* op = "nst_fast.lbfgs_step: ";
  const auto type = x.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble, op, "x must be float32 or float64, got ", type);
  const int64_t n = x.numel(), h = valid.numel();
  TORCH_CHECK(n >= 1, op, "x is empty");
  TORCH_CHECK(h >= 1 && h <= lbfgs::kMaxHistory, op, "history must be 1..", num(lbfgs::kMaxHistory), ", got ",
              num(h));
  const std::pair<const char*, const at::Tensor*> vectors[] = {{"x", &x}, {"grad", &grad}, {"x_a", &x_a},
                                                               {"g_a", &g_a}, {"d", &d}};
  for (const auto& [name, v] : vectors) {
    TORCH_CHECK(v->numel() == n && v->is_contiguous() && v->scalar_type() == type, op, name,
                " must be contiguous with ", num(n), " elements of x's dtype");
  }
  TORCH_CHECK(W.dim() == 2 && W.size(0) == 2 * h && W.size(1) == n && W.is_contiguous() && W.scalar_type() == type,
              op, "W must be (2 history, n) = (", num(2 * h), ", ", num(n), ") of x's dtype, got ", dims(W));
  TORCH_CHECK(WW.dim() == 2 && WW.size(0) == 2 * h && WW.size(1) == 2 * h && WW.is_contiguous() &&
                  WW.scalar_type() == at::kDouble,
              op, "WW must be (2 history, 2 history) float64, got ", dims(WW));
  TORCH_CHECK(valid.scalar_type() == at::kBool && valid.is_contiguous(), op, "valid must be a bool vector");
  const std::pair<const char*, const at::Tensor*> scalars[] = {{"loss", &loss}, {"f_a", &f_a}, {"t", &t}};
  for (const auto& [name, v] : scalars) {
    TORCH_CHECK(v->numel() == 1 && v->scalar_type() == type, op, name, " must be one value of x's dtype");
  }
  const std::pair<const char*, const at::Tensor*> counters[] = {{"idx", &idx}, {"steps", &steps},
                                                                {"accepted", &accepted}};
  for (const auto& [name, v] : counters) {
    TORCH_CHECK(v->numel() == 1 && v->scalar_type() == at::kLong, op, name, " must be one int64 value");
  }
  TORCH_CHECK(workspace.scalar_type() == at::kDouble && workspace.is_contiguous() &&
                  workspace.numel() >= lbfgs::workspace_size(n, h),
              op, "workspace must be float64 with lbfgs_workspace_size(n, history) = ",
              num(lbfgs::workspace_size(n, h)), " elements, got ", num(workspace.numel()));
  const at::Tensor* all[] = {&loss, &grad, &x_a, &f_a, &g_a, &d, &t, &W, &WW, &valid, &idx, &steps, &accepted,
                             &workspace};
  for (const at::Tensor* v : all) {
    TORCH_CHECK(v->device() == x.device(), op, "every tensor must be on x's device ", x.device(), ", got ",
                v->device());
  }
}

void fail_unsupported_dtype(const char* op, at::ScalarType type) {
  TORCH_CHECK(false, "nst_fast: ", op, ": unsupported dtype ", type);
  abort();  // unreachable: TORCH_CHECK(false) throws
}

}  // namespace nst_fast
