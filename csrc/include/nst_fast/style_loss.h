#pragma once
// Shared declarations for the nst_fast ops (the style loss; the Winograd convolution
// of cpu/winograd_cpu.cpp is described there).
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
//   style_loss_relu_backward(g, D, F, s, dA)
//                                   -> F <= 0 ? 0 : dA + dF            (B, C, M)
//
// style_loss_relu_backward is the backward of relu(X) = F with the style loss taken
// at F: dA is the gradient reaching F from the layers above (undefined: none).
// Its result is rounded as the separate ops round it: dF to the feature dtype, then
// dA + dF, so it equals style_loss_backward, an add and threshold_backward.
//
// G, D and the loss are float32 (float64 for float64 features); accumulation is
// always at least float32, whatever the feature dtype.
#include <torch/types.h>

namespace nst_fast {

inline at::ScalarType accum_dtype(at::ScalarType features_dtype) {
  return features_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Argument checks, defined in checks.cpp. They live in a host-compiler translation
// unit on purpose: on torch 2.11 a failing TORCH_CHECK whose message was built in
// the nvcc-compiled file crashed the process, so the CUDA kernels call these.
void check_features(const at::Tensor& features);
void check_gram_like(const char* name, const at::Tensor& gram, const at::Tensor& features);
void check_grad_loss(const at::Tensor& grad_loss, const at::Tensor& features);
void check_grad_features(const at::Tensor& grad_features, const at::Tensor& features);
void check_cuda_features(const char* op, const at::Tensor& features);
void check_winograd_args(const at::Tensor& input, const at::Tensor& weight_transform,
                         const c10::optional<at::Tensor>& bias);
[[noreturn]] void fail_unsupported_dtype(const char* op, at::ScalarType type);

}  // namespace nst_fast
