#pragma once
// Shared declarations for the nst_fast style-loss ops.
//
// Shapes: features F is (B, C, M) with M = H * W, either dense row layout
// (stride(2) == 1) or channels-last (stride(1) == 1); other layouts are made
// contiguous first. The target Gram A is (B, C, C) with contiguous last two
// dims; its batch stride may be 0 (one target shared by the batch). A must be
// symmetric, as every Gram matrix is: kernels may read one triangle only, and
// the backward's single GEMM relies on D = D^T.
//
//   gram(F)                         -> G = F F^T                     (B, C, C)
//   style_loss_forward(F, A, s)     -> loss = s * sum (G - A)^2,  D = G - A
//   style_loss_backward(g, D, F, s) -> dF = g * 4 * s * D F           (B, C, M)
//
// G, D and the loss are float32 (float64 for float64 features); accumulation is
// always at least float32, whatever the feature dtype.
#include <torch/types.h>

namespace nst_fast {

inline at::ScalarType accum_dtype(at::ScalarType features_dtype) {
  return features_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_features(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 3,
              "nst_fast: features must be (B, C, M), got ", features.dim(), " dims");
  auto t = features.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
              "nst_fast: features must be float32, float64, bfloat16 or float16, got ", t);
}

inline void check_gram_like(const char* name, const at::Tensor& gram, const at::Tensor& features) {
  TORCH_CHECK(gram.device() == features.device(), "nst_fast: ", name, " is on ", gram.device(),
              " but features are on ", features.device());
  TORCH_CHECK(gram.dim() == 3 && gram.size(1) == features.size(1) && gram.size(2) == features.size(1),
              "nst_fast: ", name, " must be (B, C, C) with C = ", features.size(1), ", got ",
              gram.sizes());
  TORCH_CHECK(gram.size(0) == features.size(0),
              "nst_fast: ", name, " batch ", gram.size(0), " does not match features batch ",
              features.size(0));
  TORCH_CHECK(gram.scalar_type() == accum_dtype(features.scalar_type()),
              "nst_fast: ", name, " must be ", accum_dtype(features.scalar_type()), ", got ",
              gram.scalar_type());
}

}  // namespace nst_fast
