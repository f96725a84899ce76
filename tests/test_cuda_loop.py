"""The whole stylize loop on a GPU: the fused kernels against the reference path,
CUDA-graph replay against eager steps, and the precision modes. Skips without CUDA."""
import pytest
import torch

from nst_fast import StyleTransfer, backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture(scope="module")
def transfer():
    return StyleTransfer(weights="random", device="cuda")


def _run(transfer, small_images, **kw):
    content, style = small_images
    args = dict(size=128, steps=50, init="noise", seed=1, style_weight=5e7)
    args.update(kw)
    return transfer.stylize_tensor(content, style, **args)


def test_step_is_captured_in_a_cuda_graph(transfer, small_images):
    _run(transfer, small_images, steps=10)
    assert transfer.last_run["cuda_graph"], transfer.last_run["why_not"]


def test_graph_replay_matches_eager_steps(transfer, small_images):
    graphed = _run(transfer, small_images, steps=30)
    eager = _run(transfer, small_images, steps=30, cuda_graph=False)
    assert not transfer.last_run["cuda_graph"]
    # Same arithmetic; the split-K atomics make the order of fp32 additions vary.
    assert (graphed - eager).abs().max() < 2e-2


@pytest.mark.skipif(not backend.cuda_compiled(), reason="extension built without CUDA kernels")
def test_fused_loop_matches_reference_loop_after_50_steps(transfer, small_images):
    backend.set_backend("extension")
    try:
        fused = _run(transfer, small_images)
        fused_loss = transfer.history[-1]["total"]
        backend.set_backend("reference")
        ref = _run(transfer, small_images)
        ref_loss = transfer.history[-1]["total"]
    finally:
        backend.set_backend(None)
    diff = (fused - ref).abs()
    print(f"fused vs reference after 50 steps: max {diff.max():.2e} mean {diff.mean():.2e} "
          f"loss {fused_loss:.6g} vs {ref_loss:.6g}")
    assert diff.mean() < 5e-3 and diff.max() < 0.1
    assert abs(fused_loss / ref_loss - 1) < 0.02


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_precision_modes_reach_a_similar_loss(transfer, small_images, precision):
    _run(transfer, small_images, steps=60)
    fp32 = transfer.history[-1]["total"]
    _run(transfer, small_images, steps=60, precision=precision)
    other = transfer.history[-1]["total"]
    print(f"{precision}: final loss {other:.6g} vs fp32 {fp32:.6g}")
    assert abs(other / fp32 - 1) < 0.1


@pytest.mark.parametrize("cuda_graph", [False, None])
def test_no_host_sync_inside_steps(transfer, small_images, cuda_graph):
    """Steps 3..7 run with syncs made errors; the read-back at the last step is allowed."""

    def watch(info):
        torch.cuda.set_sync_debug_mode("error" if 2 <= info.step < 7 else 0)

    try:
        _run(transfer, small_images, steps=8, report_every=1000, callback=watch, cuda_graph=cuda_graph)
    finally:
        torch.cuda.set_sync_debug_mode(0)
