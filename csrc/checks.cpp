// Argument checks of the nst_fast ops (declared in style_loss.h).
#include "style_loss.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

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

void fail_unsupported_dtype(const char* op, at::ScalarType type) {
  TORCH_CHECK(false, "nst_fast: ", op, ": unsupported dtype ", type);
  abort();  // unreachable: TORCH_CHECK(false) throws
}

}  // namespace nst_fast
