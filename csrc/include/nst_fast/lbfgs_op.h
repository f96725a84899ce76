#pragma once
// The lbfgs_step op's arguments and its entry, shared by the CPU and CUDA kernels
// (lbfgs.h has the algorithm).
#include <torch/types.h>

#include "lbfgs.h"

namespace nst_fast {

// LBFGS's state (nst_fast/optimize/optim.py) and the evaluation at x.
struct LbfgsArgs {
  const at::Tensor &x, &loss, &grad, &x_a, &f_a, &g_a, &d, &t, &W, &WW, &valid, &idx, &steps, &accepted,
      &workspace;
};

void check_lbfgs_args(const LbfgsArgs& a);  // checks.cpp

// The op for one device: checks, then Run<float> or Run<double>.
template <void (*RunFloat)(const LbfgsArgs&, const lbfgs::Params&),
          void (*RunDouble)(const LbfgsArgs&, const lbfgs::Params&)>
void lbfgs_step_op(const at::Tensor& x, const at::Tensor& loss, const at::Tensor& grad, const at::Tensor& x_a,
                   const at::Tensor& f_a, const at::Tensor& g_a, const at::Tensor& d, const at::Tensor& t,
                   const at::Tensor& W, const at::Tensor& WW, const at::Tensor& valid, const at::Tensor& idx,
                   const at::Tensor& steps, const at::Tensor& accepted, const at::Tensor& workspace, double lr,
                   double c1, double backtrack, double eps, double max_step) {
  const LbfgsArgs a{x, loss, grad, x_a, f_a, g_a, d, t, W, WW, valid, idx, steps, accepted, workspace};
  check_lbfgs_args(a);
  const lbfgs::Params p{lr, c1, backtrack, eps, max_step};
  if (x.scalar_type() == at::kDouble) {
    RunDouble(a, p);
  } else {
    RunFloat(a, p);
  }
}

}  // namespace nst_fast
