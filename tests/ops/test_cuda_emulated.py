"""The CUDA style-loss kernels, run on the CPU by an emulator, against float64.

tests/cuda_emulator compiles csrc/cuda/style_loss_{forward,backward,plan}.cuh with g++
against an emulation of the CUDA features the kernels use (threads as fibers, mma.sync
by its PTX fragment layout, cp.async landing only at its wait). It checks the kernels'
indexing, pipelines, split-K bookkeeping and operand precision on every layout and
dtype where no GPU is present; tests/ops/test_cuda_ops.py checks the real thing on a GPU.
Tolerances as in tests/ops/test_cuda_ops.py.

Skips where g++ or the CUDA headers (cuda_bf16.h) are missing, or where the emulator
does not compile (a failure under NST_FAST_REQUIRE_EXTENSION, as in CI).
"""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # the CUDA kernels built with g++ and run on the CPU emulator

ROOT = Path(__file__).resolve().parents[2]
EMULATOR = Path(__file__).resolve().parents[1] / "cuda_emulator"
FP32_TOL = 1e-5
REDUCED_TOL = {"loss": 2e-5, "residual": 2e-5, "grad": 4e-3}
TF32_TOL = 5e-3
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def _cuda_include():
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_bf16.h").exists():
            return Path(home) / "include"
    return None


def _build(directory, flags, source="harness.cpp"):
    include = _cuda_include()
    if shutil.which("g++") is None or include is None:
        pytest.skip("needs g++ and the CUDA headers (set CUDA_HOME)")
    exe = directory / Path(source).stem
    cmd = ["g++", "-std=c++20", *flags, "-fno-strict-aliasing", f"-I{include}", f"-I{ROOT / 'csrc' / 'cuda'}",
           f"-I{ROOT / 'csrc' / 'include'}",
           str(EMULATOR / source), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0:
        # CI (which sets NST_FAST_REQUIRE_EXTENSION) must run it; elsewhere an older
        # compiler only loses this check.
        message = "the CUDA emulator did not compile:\n" + built.stderr[-3000:]
        if os.environ.get("NST_FAST_REQUIRE_EXTENSION"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("emulator"), ["-O2"])


@pytest.fixture(scope="module")
def checked_harness(tmp_path_factory):
    """The harness under AddressSanitizer: its buffers end where the tensors do, so a
    read or write past a tensor's last element aborts the run (compute-sanitizer's
    memcheck, on the CPU)."""
    return _build(tmp_path_factory.mktemp("emulator_asan"), ["-O1", "-fsanitize=address"])


class Run:
    def __init__(self, harness, tmp_path, dtype="f32", tf32=False, async_=True, blocks=8, seed=0, resident=True,
                 sms=2, profile=None):
        self.harness, self.dir = harness, tmp_path
        self.common = [f"dtype={dtype}", f"tf32={int(tf32)}", f"async={int(async_)}", f"blocks={blocks}",
                       f"seed={seed}", f"resident={int(resident)}", f"sms={sms}"]  # resident: 0, 1 or 256
        if profile is not None:  # a harness from emulated_profile.build: write each run's access profile
            self.common.append(f"profile={profile}")
        self.dtype = DTYPES[dtype]
        self.variant = {}

    def _features(self, f):
        b, c, m = f.shape
        span = (b - 1) * f.stride(0) + (c - 1) * f.stride(1) + (m - 1) * f.stride(2) + 1
        flat = torch.empty(0, dtype=f.dtype).set_(f.untyped_storage())[: f.storage_offset() + span]
        path = self.dir / "features.bin"
        flat.view(torch.int16 if f.element_size() == 2 else torch.int32).numpy().tofile(path)
        return [f"B={b}", f"C={c}", f"M={m}", "fs=%d,%d,%d" % f.stride(), f"foff={f.storage_offset()}",
                f"features={path}"]

    def _run(self, op, args):
        out = self.dir / "out.bin"
        done = subprocess.run([str(self.harness), f"op={op}", *self.common, *args, f"out={out}"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-5000:]
        self.variant = dict(kv.split("=") for kv in done.stdout.split()[1:])
        return out

    def gram(self, f):
        b, c, _ = f.shape
        out = self._run("gram", self._features(f))
        return torch.from_numpy(np.fromfile(out, dtype=np.float32)).view(b, c, c)

    def forward(self, f, target, scale):
        b, c, _ = f.shape
        tpath = self.dir / "target.bin"
        t = target.float()
        torch.empty(0).set_(t.untyped_storage())[t.storage_offset():].numpy().tofile(tpath)
        args = self._features(f) + [f"target={tpath}", "ts=%d,%d,%d" % t.stride(), f"scale={scale!r}"]
        raw = torch.from_numpy(np.fromfile(self._run("forward", args), dtype=np.float32))
        return raw[-1], raw[:-1].view(b, c, c)

    def backward(self, grad, residual, f, scale, upstream=None, relu=False, uoff=0):
        """The style backward; with relu (f is the ReLU's output) and upstream (the gradient
        from above, stored uoff elements into its buffer), style_loss_relu_backward's."""
        rpath = self.dir / "residual.bin"
        residual.float().contiguous().numpy().tofile(rpath)
        out_like = torch.empty_like(f)  # the layout the CUDA op allocates
        args = self._features(f) + [f"residual={rpath}", f"grad={grad!r}", f"scale={scale!r}",
                                    "os=%d,%d,%d" % out_like.stride()]
        if relu:
            args.append("relu=1")
        if upstream is not None:
            span = sum((n - 1) * s for n, s in zip(f.shape, out_like.stride())) + 1
            buf = torch.zeros(uoff + span, dtype=f.dtype)
            torch.as_strided(buf, f.shape, out_like.stride(), uoff).copy_(upstream)
            upath = self.dir / "upstream.bin"
            buf.view(torch.int16 if f.element_size() == 2 else torch.int32).numpy().tofile(upath)
            args += [f"upstream={upath}", f"uoff={uoff}"]
        raw = np.fromfile(self._run("backward", args), dtype=np.int16 if f.element_size() == 2 else np.int32)
        flat = torch.from_numpy(raw).view(f.dtype)
        return torch.as_strided(flat, f.shape, out_like.stride())


def features(b, c, m, seed=0):
    """Non-negative, ReLU-like features with random per-channel scales (never zeros)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, m, generator=g) * (0.25 + torch.rand(1, c, 1, generator=g))


def symmetric_target(b, c, seed=1):
    other = features(b, c, 64, seed=seed).double()
    return other @ other.transpose(1, 2)


def rel(out, ref):
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "non-finite values in output"
    den = ref.norm()
    return ((out - ref).norm() / (den if den > 0 else 1.0)).item()


def check(run, f, tf32=False, grad=0.75):
    """Forward, backward and Gram of one features tensor against float64."""
    b, c, m = f.shape
    scale = 1.0 / (c * max(m, 1))
    f64 = f.double()
    a = symmetric_target(b, c)
    g_ref = f64 @ f64.transpose(1, 2)
    d_ref = g_ref - a
    loss_ref = (d_ref ** 2).sum() * scale
    reduced = f.dtype != torch.float32
    tol = TF32_TOL if tf32 else REDUCED_TOL if reduced else dict.fromkeys(("loss", "residual", "grad"), FP32_TOL)
    if isinstance(tol, float):
        tol = dict.fromkeys(("loss", "residual", "grad"), tol)

    loss, residual = run.forward(f, a, scale)
    assert rel(loss, loss_ref) <= tol["loss"]
    assert rel(residual, d_ref) <= tol["residual"]
    forward_variant = dict(run.variant)
    assert rel(run.gram(f), g_ref) <= tol["residual"]

    dfeat = run.backward(grad, residual, f, scale)
    grad_ref = 4 * scale * grad * (residual.double() @ f64)
    assert rel(dfeat, grad_ref) <= tol["grad"]
    if reduced:
        # Rounded once from an fp32-accurate value (a residual truncated to tf32 misses ~7%).
        assert (dfeat != grad_ref.to(f.dtype)).float().mean().item() <= 0.01, "gradient not correctly rounded"
    return forward_variant, dict(run.variant), rel(residual, d_ref)


def layouts(b, c, m, dtype, seed=0):
    """The features in each memory layout the kernels read without a copy."""
    f = features(b, c, m, seed).to(dtype)
    yield "contiguous", f
    yield "channels_last", f.transpose(1, 2).contiguous().transpose(1, 2)
    yield "channel_slice", features(b, c + 1, m, seed).to(dtype)[:, 1:, :]
    yield "misaligned", torch.cat([torch.zeros(1, dtype=dtype), f.flatten()])[1:].view(b, c, m)
    wide_cl = features(b, c + 8, m, seed).to(dtype).transpose(1, 2).contiguous()  # memory (B, M, C + 8)
    yield "channels_last_slice", wide_cl[:, :, 8:].transpose(1, 2)
    yield "batch_slice", features(b + 1, c, m, seed).to(dtype)[1:]


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
def test_every_layout(harness, tmp_path, dtype):
    seen, stores = set(), set()
    for name, f in layouts(2, 64, 256, DTYPES[dtype]):
        fwd, bwd, _ = check(Run(harness, tmp_path, dtype), f)
        seen.add((fwd["async"], bwd["async"]))
        stores.add(bwd["vec_out"])
        assert fwd["cl"] == bwd["cl"] == str(int(name.startswith("channels_last"))), name
    # Both pipelines ran: cp.async for the 16-byte aligned layouts, registers for the rest;
    # 2-byte gradients were stored 16 bytes a lane (rows traded between lanes).
    assert ("1", "1") in seen and ("0", "0") in seen
    assert ("8" in stores) == (dtype != "f32"), stores


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("b,c,m", [(1, 3, 97), (3, 65, 1), (1, 65, 1025), (2, 130, 97), (1, 1, 40), (1, 66, 98)])
def test_odd_shapes(harness, tmp_path, dtype, b, c, m):
    for name, f in layouts(b, c, m, DTYPES[dtype], seed=c + m):
        if name in ("contiguous", "channels_last"):
            check(Run(harness, tmp_path, dtype), f)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("c,m", [(64, 4096), (256, 256), (512, 64)], ids=["relu1_1@64", "relu3_1@64", "relu5_1@128"])
def test_vgg_layer_shapes(harness, tmp_path, dtype, c, m):
    for _, f in list(layouts(1, c, m, DTYPES[dtype], seed=c))[:2]:
        check(Run(harness, tmp_path, dtype), f)


@pytest.mark.parametrize("blocks,seed", [(1, 0), (5, 1), (64, 2), (64, 3)])
def test_split_k_and_block_order(harness, tmp_path, blocks, seed):
    """Any number of slices of M, finished in any order, gives the same result."""
    f = features(2, 130, 600, seed=3)
    check(Run(harness, tmp_path, blocks=blocks, seed=seed), f)


def test_register_pipeline_forced(harness, tmp_path):
    """NST_FAST_CUDA_ASYNC=0 takes the register-staged loads on aligned features too."""
    for dtype in ("f32", "bf16"):
        fwd, bwd, _ = check(Run(harness, tmp_path, dtype, async_=False), features(1, 64, 512).to(DTYPES[dtype]))
        assert fwd["async"] == bwd["async"] == "0"


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("c,m,sms", [(64, 1000, 1), (96, 304, 1), (128, 600, 2)])
def test_resident_backward(harness, tmp_path, dtype, c, m, sms):
    """C <= 128 on the cp.async path: each block keeps its rows of D and walks several
    output tiles (a grid of one wave on a GPU of `sms` multiprocessors)."""
    for name, f in layouts(2, c, m, DTYPES[dtype], seed=c):
        if name in ("contiguous", "channels_last", "batch_slice"):
            _, bwd, _ = check(Run(harness, tmp_path, dtype, sms=sms), f)
            assert bwd["resident"] == "1" and int(bwd["blocks"]) < (m + 63) // 64 * ((c + 63) // 64), name


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
def test_resident_backward_256_panel(harness, tmp_path, dtype):
    """NST_FAST_CUDA_RESIDENT=256 extends the D-resident backward to C <= 256 (a
    256-column panel, 2 blocks per SM); by default C > 128 takes one block per tile."""
    for name, f in layouts(1, 200, 400, DTYPES[dtype], seed=7):
        if name in ("contiguous", "channels_last"):
            _, bwd, _ = check(Run(harness, tmp_path, dtype, resident=256, sms=4), f)
            assert bwd["resident"] == "1" and bwd["panel"] == "256" and bwd["blocks"] == "8", (name, bwd)
    _, bwd, _ = check(Run(harness, tmp_path, dtype, sms=1), features(1, 200, 400, seed=7).to(DTYPES[dtype]))
    assert bwd["resident"] == "0"


def test_resident_backward_tf32_and_forced_off(harness, tmp_path):
    f = features(1, 128, 512, seed=9)
    _, bwd, _ = check(Run(harness, tmp_path, tf32=True, sms=1), f, tf32=True)
    assert bwd["resident"] == "1"
    for dtype in ("f32", "bf16"):  # NST_FAST_CUDA_RESIDENT=0: one block per output tile
        _, bwd, _ = check(Run(harness, tmp_path, dtype, resident=False), f.to(DTYPES[dtype]))
        assert bwd["resident"] == "0" and bwd["async"] == "1"


def test_tf32_products_when_allowed(harness, tmp_path):
    """One TF32 product per pair: inside the TF32 bound and distinguishable from 3xTF32."""
    f = features(1, 128, 512, seed=5)
    _, _, exact = check(Run(harness, tmp_path), f)
    _, _, tf32 = check(Run(harness, tmp_path, tf32=True), f, tf32=True)
    assert exact <= FP32_TOL < tf32 <= TF32_TOL


def relu_inputs(f, seed):
    """f with about a third of its elements zeroed, as a ReLU's output; a residual; an upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    f[torch.rand(f.shape, generator=g) < 0.3] = 0  # in place: f keeps its layout
    b, c, _ = f.shape
    f64 = f.double()
    residual = (f64 @ f64.transpose(1, 2) - symmetric_target(b, c)).float()
    upstream = (torch.randn(f.shape, generator=g) * 0.05).to(f.dtype)
    return residual, upstream


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("c,m", [(64, 600), (200, 97)], ids=["resident", "per_tile"])
def test_relu_epilogue_equals_the_separate_ops(harness, tmp_path, dtype, c, m):
    """style_loss_relu_backward's epilogue against the plain backward followed by an add
    and threshold_backward, bit for bit: the same products, rounded the same way."""
    stores = set()
    for name, f in layouts(2, c, m, DTYPES[dtype], seed=c):
        if name not in ("contiguous", "channels_last", "misaligned"):
            continue  # the host side copies the rest to a dense layout first
        residual, upstream = relu_inputs(f, c + m)
        run = Run(harness, tmp_path, dtype, sms=1)
        scale = 1.0 / (c * m)
        plain = run.backward(0.75, residual, f, scale)
        for uoff in (0, 1):  # 1: the upstream buffer misaligned, so narrower stores
            fused = run.backward(0.75, residual, f, scale, upstream=upstream, relu=True, uoff=uoff)
            assert torch.equal(fused, torch.ops.aten.threshold_backward(plain + upstream, f, 0)), (name, uoff)
            stores.add(run.variant["vec_out"])
        masked = run.backward(0.75, residual, f, scale, relu=True)
        assert torch.equal(masked, torch.ops.aten.threshold_backward(plain, f, 0)), name
        assert (masked == 0).float().mean() > 0.25
        expect_resident = "1" if c <= 128 and name != "misaligned" else "0"
        assert run.variant["resident"] == expect_resident, name
    assert stores == ({"1", "2"} if dtype == "f32" else {"1", "8"}), stores


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_relu_epilogue_reads_inside_the_tensors(checked_harness, tmp_path, dtype):
    for name, f in list(layouts(2, 65, 97, DTYPES[dtype], seed=13))[:2]:
        residual, upstream = relu_inputs(f, 14)
        run = Run(checked_harness, tmp_path, dtype)
        run.backward(0.75, residual, f, 1e-4, upstream=upstream, relu=True)


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
def test_no_access_outside_the_tensors(checked_harness, tmp_path, dtype):
    """Odd sizes in every layout: the bounds checks keep every load and store inside."""
    for _, f in layouts(2, 65, 97, DTYPES[dtype], seed=11):
        check(Run(checked_harness, tmp_path, dtype), f)
    for b, c, m in ((1, 3, 33), (1, 70, 1)):
        for _, f in list(layouts(b, c, m, DTYPES[dtype], seed=c))[:4]:
            check(Run(checked_harness, tmp_path, dtype, blocks=64), f)
