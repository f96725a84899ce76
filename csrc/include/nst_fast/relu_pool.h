#pragma once
// A ReLU and the 2x2, stride-2 max pool after it (VGG's pools) as two ops, for
// (B, C, H, W) tensors of any float dtype:
//
//   relu_max_pool2_(X)                  X = relu(X) in place -> max_pool2d(X, 2, 2)
//   relu_max_pool2_backward(gP, A, gA)  -> A <= 0 ? 0 : gA + (the pool's backward of gP)
//
// A is the ReLU's output (X after the first op), gP the gradient of the pooled output
// and gA (undefined: none) the gradient reaching A from elsewhere. Both give the values
// of the separate ops bit for bit: a window's maximum is PyTorch's (a later element
// wins if larger or NaN), and A's mask is threshold_backward's (a NaN keeps its
// gradient). The CUDA kernels take float32, bfloat16 and float16 in dense layouts,
// contiguous or channels-last, the CPU's float32 channels-last; anything else runs the
// separate ATen ops (relu_pool.cpp).
#include <torch/types.h>

namespace nst_fast {

// Argument checks (checks.cpp: host-compiled, see style_loss.h).
void check_relu_max_pool2(const at::Tensor& x);
void check_relu_max_pool2_backward(const at::Tensor& grad_pooled, const at::Tensor& act,
                                   const c10::optional<at::Tensor>& grad_act);

// The ops these stand for, run as separate ATen ops.
at::Tensor relu_max_pool2_separate_(at::Tensor& x);
at::Tensor relu_max_pool2_backward_separate(const at::Tensor& grad_pooled, const at::Tensor& act,
                                            const c10::optional<at::Tensor>& grad_act);

// Whether the kernels take t's layout: 4 dims, dense, contiguous or channels-last.
bool relu_pool_dense(const at::Tensor& t);

// The pooled output's layout: channels-last where x's channels are adjacent in memory
// (nst_fast/pooling.py's fake kernel says the same).
at::MemoryFormat relu_pool_format(const at::Tensor& x);

}  // namespace nst_fast
