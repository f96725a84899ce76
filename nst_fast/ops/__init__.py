"""The ops nst_fast runs its steps with, one module each: the wrapper that runs the
compiled kernel (torch.ops.nst_fast.*, csrc/) or its reference, the op's fake for
torch.compile, and its autograd.

  style_loss.py   gram, style_loss_forward, style_loss_backward, style_loss_relu_backward
  relu_pool.py    relu_max_pool2_, relu_max_pool2_backward
  winograd.py     conv3x3_winograd
  lbfgs.py        lbfgs_step (nst_fast.optimize.optim.LBFGS's step)
  loop_record.py  loop_record_ (nst_fast.optimize.steps.LoopState's bookkeeping)
  adam.py         PyTorch's fused Adam step (nst_fast.optimize.optim.Adam's step)

reference.py holds every op's pure-PyTorch reference, and backend.py decides which
of the two runs (backend.runs_extension).
"""
