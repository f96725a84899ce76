"""Exercise the CUDA ops at small test shapes, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python3 tests/sanitizer_run.py
    compute-sanitizer --tool racecheck python3 tests/sanitizer_run.py --quick

Not a pytest module (no test_ prefix). Prints the worst relative error against
the float64 reference and exits non-zero if it exceeds the dtype's bound.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nst_fast.ops import reference  # noqa: E402
from nst_fast.optimize.optim import LBFGS  # noqa: E402


def rel(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def layouts(b, c, m, dtype):
    base = torch.rand(b, c, m, device="cuda").to(dtype)
    yield "contiguous", base
    yield "channels-last", torch.rand(b, m, c, device="cuda").to(dtype).transpose(1, 2)
    yield "offset", torch.rand(b, c, m + 1, device="cuda").to(dtype)[:, :, 1:]


def lbfgs_gap(n, dtype, steps=12):
    """The fused L-BFGS step's CUDA kernels against its CPU kernel, fed the same
    evaluations: the largest relative gap between their proposals. The evaluations are
    made on the CPU, so the kernels the sanitizer watches are nearly all the op's."""
    gen = torch.Generator().manual_seed(n)
    curvature = (torch.rand(n, generator=gen) * 100 + 0.01).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    x_cpu, x_gpu = torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype, device="cuda")
    cpu, gpu = LBFGS(x_cpu, history=3), LBFGS(x_gpu, history=3)
    if not (cpu.fused and gpu.fused):
        raise SystemExit("sanitizer_run: the extension lacks a fused L-BFGS kernel")
    gap = 0.0
    for _ in range(steps):
        grad, loss = curvature * x_cpu - b, (0.5 * curvature * x_cpu * x_cpu - b * x_cpu).sum()
        gpu.step(x_gpu, loss.to("cuda"), grad.to("cuda"))
        cpu.step(x_cpu, loss, grad)
        gap = max(gap, rel(x_gpu.cpu(), x_cpu))
    return gap


def pool_gap(shape, dtype, channels_last):
    """The ReLU + max pool ops against the separate modules: the largest relative gap
    (0: bit for bit)."""
    x = torch.randn(shape, device="cuda").to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad_act = torch.randn_like(x)
    act = x.clone()
    pooled = torch.ops.nst_fast.relu_max_pool2_(act)
    grad_pooled = torch.randn_like(pooled)
    grad = torch.ops.nst_fast.relu_max_pool2_backward(grad_pooled, act, grad_act)
    want_act = torch.relu(x)
    want_pooled, idx = torch.nn.functional.max_pool2d(want_act, 2, 2, return_indices=True)
    want = torch.ops.aten.max_pool2d_with_indices_backward(grad_pooled, want_act, [2, 2], [2, 2], [0, 0], [1, 1],
                                                           False, idx)
    want = torch.ops.aten.threshold_backward(want + grad_act, want_act, 0)
    return max(rel(act, want_act), rel(pooled, want_pooled), rel(grad, want))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer shapes (racecheck is slow)")
    args = p.parse_args()
    torch.manual_seed(0)
    shapes = [(1, 3, 97), (2, 65, 130), (1, 130, 1025), (2, 64, 4096)]
    dtypes = [torch.float32, torch.bfloat16]
    if args.quick:
        shapes = [(1, 65, 130), (2, 64, 1024)]
    worst = {}
    for dtype in dtypes:
        for b, c, m in shapes:
            for name, f in layouts(b, c, m, dtype):
                a = reference.gram(torch.rand(b, c, m, device="cuda", dtype=torch.float64)).float()
                s = 1.0 / (c * c * m * m)
                loss, res = torch.ops.nst_fast.style_loss_forward(f, a, s)
                g = torch.ops.nst_fast.gram(f)
                gl = torch.tensor(0.5, device="cuda")
                df = torch.ops.nst_fast.style_loss_backward(gl, res, f, s)
                up = torch.rand_like(f)
                fused = torch.ops.nst_fast.style_loss_relu_backward(gl, res, f, s, up)
                torch.cuda.synchronize()
                lr, rr = reference.style_loss_forward(f.double(), a.double(), s)
                dr = reference.style_loss_backward(gl.double(), rr, f.double(), s)
                errs = [rel(loss, lr), rel(res, rr), rel(g, reference.gram(f.double())), rel(df, dr),
                        rel(fused, torch.ops.aten.threshold_backward(df + up, f, 0))]  # 0: the same rounding
                # D = G - A loses the digits G and A share: an exact fp32 G would err by
                # eps * |G| / |D| in D and in dF = D F. Judge those two against that.
                shared = (rr.norm() / reference.gram(f.double()).norm()).item()
                errs[1] *= min(1.0, shared)
                errs[3] *= min(1.0, shared)
                key = str(dtype)
                worst[key] = max(worst.get(key, 0.0), *errs)
                print(f"{dtype} {name:14s} B={b} C={c} M={m}: loss {errs[0]:.2e} res {errs[1]:.2e} "
                      f"gram {errs[2]:.2e} grad {errs[3]:.2e} relu {errs[4]:.2e}", flush=True)
    for n in [1, 1000] if args.quick else [1, 1000, 3001]:
        for dtype in (torch.float32, torch.float64):
            gap = lbfgs_gap(n, dtype)
            worst[str(dtype)] = max(worst.get(str(dtype), 0.0), gap)
            print(f"{dtype} lbfgs_step n={n}: gap {gap:.2e}", flush=True)
    for shape in [(1, 3, 5, 7), (2, 64, 18, 20)]:
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                gap = pool_gap(shape, dtype, channels_last)
                worst[str(dtype)] = max(worst.get(str(dtype), 0.0), gap)
                print(f"{dtype} relu_max_pool2 {shape} channels_last={channels_last}: gap {gap:.2e}", flush=True)
    bounds = {str(torch.float32): 1e-5, str(torch.bfloat16): 4e-3, str(torch.float64): 1e-12}
    ok = all(worst[k] <= bounds[k] for k in worst)
    print("sanitizer_run:", "OK" if ok else "FAILED", worst)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
