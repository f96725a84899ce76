// Every op schema of the nst_fast namespace, in one place. The kernels, in cpu/ and
// cuda/, register their implementations with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>

#include "nst_fast/point_gemm.h"
#include "nst_fast/lbfgs.h"

extern "C" {
// Importing nst_fast._C runs the static registrations below; the module itself
// holds nothing.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(nst_fast, m) {
  m.def("gram(Tensor features) -> Tensor");
  m.def("style_loss_forward(Tensor features, Tensor target, float scale) -> (Tensor, Tensor)");
  m.def("style_loss_backward(Tensor grad_loss, Tensor residual, Tensor features, float scale) -> Tensor");
  // The backward of a ReLU whose output is `features`, with the style loss's gradient
  // added to the gradient from the layers above (style_loss.h).
  m.def(
      "style_loss_relu_backward(Tensor grad_loss, Tensor residual, Tensor features, float scale, "
      "Tensor? grad_features) -> Tensor");
  m.def("conv3x3_winograd(Tensor input, Tensor weight_transform, Tensor? bias) -> Tensor");
  // A ReLU in place and the 2x2, stride-2 max pool after it, and their backward
  // (relu_pool.h): act is the ReLU's output, grad_act the gradient reaching it from elsewhere.
  m.def("relu_max_pool2_(Tensor(a!) x) -> Tensor");
  m.def("relu_max_pool2_backward(Tensor grad_pooled, Tensor act, Tensor? grad_act) -> Tensor");
  // One L-BFGS step in place (lbfgs.h; the state of nst_fast.optimize.optim.LBFGS).
  m.def(
      "lbfgs_step(Tensor(a!) x, Tensor loss, Tensor grad, Tensor(b!) x_a, Tensor(c!) f_a, Tensor(d!) g_a, "
      "Tensor(e!) d, Tensor(f!) t, Tensor(g!) W, Tensor(h!) WW, Tensor(i!) valid, Tensor(j!) idx, "
      "Tensor(k!) steps, Tensor(l!) accepted, Tensor(m!) workspace, float lr, float c1, float backtrack, "
      "float eps, float max_step) -> ()");
  // One step's bookkeeping of the optimisation loop in place (loop_record.h).
  m.def(
      "loop_record_(Tensor total, Tensor terms, Tensor weights, int shown, Tensor(a!) best_loss, "
      "Tensor(b!) bad_streak, Tensor(c!) row, Tensor(d!) history, Tensor(e!) cursor, Tensor(f!) improved) -> ()");
  // Float64 elements of lbfgs_step's workspace; -1 where the history is too long for it.
  m.def("lbfgs_workspace_size(int n, int history) -> int", [](int64_t n, int64_t history) -> int64_t {
    if (n < 1 || history < 1 || history > nst_fast::lbfgs::kMaxHistory) return -1;
    return nst_fast::lbfgs::workspace_size(n, history);
  });
  // Whether conv3x3_winograd takes bfloat16 on this CPU (AVX512-BF16).
  m.def("winograd_bf16_supported() -> bool", [] { return nst_fast::point_gemm_bf16_supported(32); });
  // The architecture (e.g. 90) of this build's CUDA code that runs on CUDA device `device`,
  // 0 if none (cuda/kernel_image.cu: no kernel where the CUDA kernels are not compiled).
  m.def("cuda_kernel_image(int device) -> int");
}
