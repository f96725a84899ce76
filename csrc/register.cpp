// Op schemas for the nst_fast namespace. Kernels live in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

#include "cpu/point_gemm.h"

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
  m.def("conv3x3_winograd(Tensor input, Tensor weight_transform, Tensor? bias) -> Tensor");
  // Whether conv3x3_winograd takes bfloat16 on this CPU (AVX512-BF16).
  m.def("winograd_bf16_supported() -> bool", [] { return nst_fast::point_gemm_bf16_supported(32); });
}
