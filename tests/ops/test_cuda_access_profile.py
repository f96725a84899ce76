"""How the CUDA kernels' memory accesses would be served on a GPU, counted on the CPU.

The emulator built with its access profiler (tests/emulated_profile.py) groups every
shared and global access into warp instructions and costs them as the hardware would:
wavefronts per shared-memory request (bank conflicts) and 32-byte sectors per global
request (coalescing). These tests hold the main loops to the ideal: no bank conflict in
any fragment read or cp.async fill, every cp.async load whole sectors, and the
D-resident backward reading its rows of D once per block. Counts, not times.
Skips where g++, addr2line or the CUDA headers are missing (fails under
NST_FAST_REQUIRE_EXTENSION, as in CI, if the profiler does not build).
"""
import os
import re
import shutil

import emulated_profile
import pytest
import test_cuda_emulated as emulated
import test_cuda_emulated_pool as pool
import torch

pytestmark = pytest.mark.slow  # the CUDA kernels built with g++ and run on the CPU emulator

KERNELS = emulated.ROOT / "csrc" / "cuda" / "style_loss_pipeline.cuh"  # async_tile, the kernels' cp.async


def _cp_async_site():
    """file:line of the cp.async in async_tile, the main loops' only global loads."""
    for number, line in enumerate(KERNELS.read_text().splitlines(), 1):
        if re.search(r"\bcp_async16\(", line):
            return f"{KERNELS.name}:{number}"
    raise AssertionError("no cp_async16 call in " + KERNELS.name)


def _build_profiler(directory, source="harness.cpp"):
    include = emulated._cuda_include()
    if include is None or shutil.which("g++") is None or shutil.which("addr2line") is None:
        pytest.skip("needs g++, addr2line and the CUDA headers (set CUDA_HOME)")
    try:
        return emulated_profile.build(directory, include, source)
    except RuntimeError as exc:
        message = f"the profiling emulator did not build: {exc}"
        if os.environ.get("NST_FAST_REQUIRE_EXTENSION"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def profiler(tmp_path_factory):
    return _build_profiler(tmp_path_factory.mktemp("profiler"))


@pytest.fixture(scope="module")
def pool_profiler(tmp_path_factory):
    return _build_profiler(tmp_path_factory.mktemp("pool_profiler"), "pool_harness.cpp")


def profile(profiler, tmp_path, op, dtype, channels_last, c, m, resident=1):
    path = tmp_path / "profile.txt"
    run = emulated.Run(profiler, tmp_path, dtype, resident=resident, sms=2, profile=path)
    f = emulated.features(1, c, m, seed=c).to(emulated.DTYPES[dtype])
    if channels_last:
        f = f.transpose(1, 2).contiguous().transpose(1, 2)
    target = emulated.symmetric_target(1, c)
    if op == "forward":
        run.forward(f, target, 1.0 / (c * m))
    else:
        residual = (f.double() @ f.double().transpose(1, 2) - target).float()
        run.backward(0.75, residual, f, 1.0 / (c * m))
    assert run.variant["async"] == "1", run.variant
    return run.variant, emulated_profile.read(path, profiler)


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])  # tf32 reads the same tiles as f32
@pytest.mark.parametrize("channels_last", [False, True], ids=["standard", "channels_last"])
@pytest.mark.parametrize("op,resident", [("forward", 1), ("backward", 0), ("backward", 1), ("backward", 256)],
                         ids=["forward", "backward", "backward_resident", "backward_resident256"])
def test_main_loops_conflict_free_and_coalesced(profiler, tmp_path, op, resident, dtype, channels_last):
    c, m = (256, 128) if resident == 256 else (128, 256)
    variant, p = profile(profiler, tmp_path, op, dtype, channels_last, c, m, resident=resident)
    if op == "backward":
        assert variant["resident"] == str(int(resident != 0))
    cp_async = _cp_async_site()
    main_loop = [s for s in p.sites if s.space == "shared" and (s.where.startswith("tile_mma.cuh")
                                                               or s.where == cp_async)]
    assert any(s.where == cp_async and s.write for s in main_loop), "no cp.async fill seen"
    assert any(s.where.startswith("tile_mma.cuh") and not s.write for s in main_loop), "no fragment read seen"
    conflicted = [s for s in main_loop if s.units != s.ideal or s.divergent]
    assert not conflicted, f"bank conflicts: {conflicted}"
    loads = [s for s in p.sites if s.space == "global" and s.where == cp_async]
    assert loads and all(s.units == s.ideal and not s.divergent for s in loads), f"uncoalesced cp.async loads: {loads}"


@pytest.mark.parametrize("dtype,c,m,setting", [("f32", 64, 1024, 1), ("bf16", 64, 1024, 1), ("f32", 256, 256, 256)],
                         ids=["panel64-f32", "panel64-bf16", "panel256-f32"])
def test_resident_backward_reads_its_rows_of_d_once(profiler, tmp_path, dtype, c, m, setting):
    variant, resident = profile(profiler, tmp_path, "backward", dtype, False, c, m, resident=setting)
    blocks, n_i = int(variant["blocks"]), c // 64
    assert variant["resident"] == "1" and blocks < n_i * (m // 64)
    d_bytes = c * c * 4
    assert resident.distinct["residual"] == d_bytes
    assert resident.requested["residual"] == (blocks // n_i) * d_bytes  # each block its 64 rows, once
    _, plain = profile(profiler, tmp_path, "backward", dtype, False, c, m, resident=0)
    assert plain.requested["residual"] == (m // 64) * d_bytes  # each output tile its 64 rows
    f_bytes = c * m * torch.finfo(emulated.DTYPES[dtype]).bits // 8
    for p in (resident, plain):  # the features once per channel tile
        assert p.distinct["features"] == f_bytes and p.requested["features"] == n_i * f_bytes


def test_gradient_stores_fill_whole_sectors(profiler, tmp_path):
    """The gradient's stores use every byte of the sectors they touch: fp32 pairs fill
    32 bytes of a row per warp instruction, and 2-byte pairs, which would cover only 16,
    are traded between the four lanes of a row and stored 16 bytes a lane. Where a
    row's length rules out 16-byte stores (here M = 258), the pairs go out as they
    are: at least 2 sectors for every 16 bytes (more where a row starts mid-sector),
    which shows the profile counts partial sectors."""
    for dtype, m in (("f32", 256), ("bf16", 256), ("f16", 256), ("bf16", 258)):
        path = tmp_path / "profile.txt"
        run = emulated.Run(profiler, tmp_path, dtype, profile=path)
        f = emulated.features(1, 64, m).to(emulated.DTYPES[dtype])
        residual = (f.double() @ f.double().transpose(1, 2)).float()
        run.backward(0.75, residual, f, 1.0 / (64 * m))
        assert run.variant["vec_out"] == ("2" if m % 8 else "8" if dtype != "f32" else "2"), run.variant
        stores = [s for s in emulated_profile.read(path, profiler).sites
                  if s.space == "global" and s.write and s.region == "out" and s.instructions]
        assert stores, (dtype, m)
        if m % 8:
            assert all(s.excess >= 2 for s in stores), (dtype, m, stores)
        else:
            assert all(s.excess == 1 for s in stores), (dtype, m, stores)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("op", ["forward", "backward"])
def test_pool_kernels_use_whole_sectors(pool_profiler, tmp_path, dtype, op):
    """The ReLU + max pool kernels on channels-last tensors: 16 bytes of channels a lane,
    every load and store of a warp whole 32-byte sectors."""
    x, grad_pooled, grad_act = pool.inputs((1, 64, 8, 12), pool.DTYPES[dtype], "channels_last", seed=1)
    path = tmp_path / "profile.txt"
    if op == "forward":
        launch = pool.emulated_forward(pool_profiler, tmp_path, x, extra=[f"profile={path}"])[2]
    else:
        act = torch.relu(x)
        launch = pool.emulated_backward(pool_profiler, tmp_path, act, grad_pooled, grad_act,
                                        extra=[f"profile={path}"])[1]
    assert int(launch["v"]) == 16 // x.element_size()
    prof = emulated_profile.read(path, pool_profiler)
    units, ideal = prof.total("global")
    assert ideal > 0 and units == ideal, [s for s in prof.sites if s.space == "global"]
    assert all(s.bytes == 16 for s in prof.sites if s.space == "global" and s.instructions)
