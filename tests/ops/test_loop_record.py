"""The loop's bookkeeping as one op (torch.ops.nst_fast.loop_record_,
csrc/include/nst_fast/loop_record.h) against the same in PyTorch ops, and the loss's
terms that feed it."""
import pytest
import torch
from conftest import OpNames

from nst_fast import StyleTransfer
from nst_fast.losses import gatys as losses
from nst_fast.nets import vgg
from nst_fast.ops import backend, reference
from nst_fast.optimize.steps import LoopState

pytestmark = pytest.mark.skipif(not backend.has_op_kernel("loop_record_", "cpu"), reason="extension not built")

TOTALS = [5.0, 7.0, 3.0, float("nan"), float("inf"), float("nan"), 2.5, 2.5, 1.0]


def _state(rows, cols):
    return dict(best_loss=torch.tensor(float("inf")), bad_streak=torch.zeros((), dtype=torch.int32),
                row=torch.full((cols,), float("nan")), history=torch.full((rows, cols), float("nan")),
                cursor=torch.zeros(1, dtype=torch.long), improved=torch.zeros((), dtype=torch.bool))


def _step(fn, total, terms, weights, shown, st):
    fn(torch.tensor(total), terms, weights, shown, st["best_loss"], st["bad_streak"], st["row"], st["history"],
       st["cursor"], st["improved"])


@pytest.mark.parametrize("rows", [20, 4], ids=["history_long_enough", "history_full"])
def test_the_op_equals_the_pytorch_ops(rows):
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(3, 6, generator=g)
    op, ref = _state(rows, 4 + 3 + 1), _state(rows, 4 + 3 + 1)
    improved, streaks = [], []
    for total in TOTALS:
        terms = torch.rand(6, generator=g) * 100
        _step(torch.ops.nst_fast.loop_record_, total, terms, weights, 4, op)
        _step(reference.loop_record_, total, terms, weights, 4, ref)
        for name in ("best_loss", "bad_streak", "cursor", "improved"):
            assert torch.equal(op[name], ref[name]) or (op[name].isnan() & ref[name].isnan()).all(), name
        torch.testing.assert_close(op["row"], ref["row"], rtol=1e-7, atol=0, equal_nan=True)
        torch.testing.assert_close(op["history"], ref["history"], rtol=1e-7, atol=0, equal_nan=True)
        assert torch.equal(op["row"][:4], terms[:4])
        torch.testing.assert_close(op["row"][4:7], weights @ terms)
        improved.append(bool(op["improved"]))
        streaks.append(int(op["bad_streak"]))
    assert improved == [True, False, True, False, False, False, True, False, True]
    assert streaks == [0, 0, 0, 1, 2, 3, 0, 0, 0]
    assert float(op["best_loss"]) == 1.0 and int(op["cursor"]) == len(TOTALS)
    last = min(len(TOTALS), rows) - 1  # a full history keeps overwriting its last row
    assert op["history"][last, -1] == 1.0 and op["history"][:last, -1].ne(1.0).all()


def test_opcheck_and_errors():
    st = _state(3, 3)
    args = (torch.tensor(2.0), torch.rand(4), torch.rand(1, 4), 1, st["best_loss"], st["bad_streak"], st["row"],
            st["history"], st["cursor"], st["improved"])
    torch.library.opcheck(torch.ops.nst_fast.loop_record_.default, args)
    with pytest.raises(RuntimeError, match="bad_streak must be a contiguous Int"):
        torch.ops.nst_fast.loop_record_(*args[:5], torch.zeros((), dtype=torch.long), *args[6:])
    with pytest.raises(RuntimeError, match=r"history must be \(rows, 3\)"):
        torch.ops.nst_fast.loop_record_(*args[:7], torch.zeros(3, 4), *args[8:])
    with pytest.raises(RuntimeError, match="shown must be in"):
        torch.ops.nst_fast.loop_record_(*args[:3], 5, *args[4:])


def test_loop_state_records_with_the_op_or_without(monkeypatch):
    xs = [torch.full((1, 3, 2, 2), float(v)) for v in range(len(TOTALS))]
    weights = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    steps = [(x, torch.tensor(total), torch.tensor([i, 10.0 * i])) for i, (x, total) in enumerate(zip(xs, TOTALS))]
    states = []
    for fused in (True, False):
        monkeypatch.setenv("NST_FAST_BACKEND", "extension" if fused else "reference")
        state = LoopState.start(xs[0], steps=len(TOTALS), n_parts=2 + 2 + 1)
        with OpNames() as seen:
            for x, total, terms in steps:
                state.record(x, total, terms, weights, 2)
        states.append(state)
        if fused:  # the op and the best image's update
            assert seen.names.count("nst_fast::loop_record_") == len(TOTALS) and len(seen.names) == 2 * len(TOTALS)
    fused, plain = states
    assert torch.equal(fused.best, xs[8]) and torch.equal(plain.best, xs[8])
    torch.testing.assert_close(fused.history, plain.history, rtol=0, atol=0, equal_nan=True)
    assert fused.history[3].tolist()[:4] == [3.0, 30.0, 3.0, 60.0]


@pytest.fixture(scope="module")
def small_loss():
    net = vgg.VGGFeatures(["relu1_1", "relu2_1", "relu2_2"], vgg.random_state(0))
    image = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = net(image)
    targets = {"relu1_1": losses.gram_target(feats["relu1_1"], 480.0),
               "relu2_1": losses.gram_target(feats["relu2_1"], 120.0)}
    loss = losses.GatysLoss(net, {"relu2_2": feats["relu2_2"].float() * 0.5}, targets, {"relu2_2": 1.0},
                            {"relu1_1": 0.25, "relu2_1": 0.75}, alpha=2.0, beta=1e3, tv_weight=0.5)
    return loss, torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(2))


def test_the_terms_make_the_parts_and_the_total(small_loss):
    loss, image = small_loss
    total, terms = loss.terms(image)
    assert terms.shape == (4,) and loss.shown_terms() == 3
    c, s1, s2, tv = terms.tolist()
    assert tv == pytest.approx(float(losses.tv_loss(image)))
    assert float(total) == pytest.approx(2.0 * c + 1e3 * (0.25 * s1 + 0.75 * s2) + 0.5 * tv, rel=1e-6)
    total_f, parts = loss(image)
    assert list(parts) == loss.part_names()
    assert float(total_f) == float(total) and float(parts["total"]) == float(total)
    assert float(parts["content"]) == pytest.approx(c, rel=1e-6)
    assert float(parts["style"]) == pytest.approx(0.25 * s1 + 0.75 * s2, rel=1e-6)
    assert float(parts["style:relu2_1"]) == s2 and float(parts["tv"]) == pytest.approx(tv, rel=1e-6)


def test_a_run_records_its_parts_and_the_callback_keeps_them(small_images):
    content, style = small_images
    seen = []
    transfer = StyleTransfer(weights="random", device="cpu")
    rows = transfer.run(content, style, size=32, steps=4, content_weight=1.0, style_weight=1e3, tv_weight=1e-3,
                        callback=lambda i: seen.append(i.losses)).history
    assert len(rows) == len(seen) == 4
    for row, losses_ in zip(rows, seen):  # each step's values, not the last step's four times
        assert float(losses_["total"]) == row["total"] and float(losses_["style"]) == row["style"]
        assert row["total"] == pytest.approx(row["content"] + 1e3 * row["style"] + 1e-3 * row["tv"], rel=1e-5)
    assert len({row["total"] for row in rows}) == 4


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and backend.has_op_kernel("loop_record_", "cuda")),
                    reason="needs a CUDA GPU and the nst_fast CUDA kernels")
def test_the_cuda_kernel_equals_the_cpu_one_and_captures():
    g = torch.Generator().manual_seed(1)
    weights = torch.rand(3, 5, generator=g)
    cpu, gpu = _state(6, 2 + 3 + 1), {k: v.cuda() for k, v in _state(6, 2 + 3 + 1).items()}
    total, terms = torch.zeros((), device="cuda"), torch.zeros(5, device="cuda")
    w = weights.cuda()

    def step():
        torch.ops.nst_fast.loop_record_(total, terms, w, 2, gpu["best_loss"], gpu["bad_streak"], gpu["row"],
                                        gpu["history"], gpu["cursor"], gpu["improved"])

    graph = torch.cuda.CUDAGraph()
    for i, value in enumerate(TOTALS):
        t = torch.rand(5, generator=g)
        _step(torch.ops.nst_fast.loop_record_, value, t, weights, 2, cpu)
        total.fill_(value), terms.copy_(t)
        if i < 3:
            step()
        else:
            if i == 3:
                with torch.cuda.graph(graph):
                    step()
            graph.replay()
        torch.cuda.synchronize()
        for name, want in cpu.items():
            torch.testing.assert_close(gpu[name].cpu(), want, rtol=1e-7, atol=0, equal_nan=True)
