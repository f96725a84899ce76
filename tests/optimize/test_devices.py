"""A network split over several devices (model parallelism). Here both parts are on
the CPU, which checks the plumbing; tests/optimize/test_cuda_loop.py splits a GPU run."""
import pytest
import torch

from nst_fast import NstError, StyleTransfer
from nst_fast.app import cli
from nst_fast.nets import vgg


@pytest.fixture(scope="module")
def single():
    return StyleTransfer(weights="random", device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("style_loss", ["gram", "mrf"])
def test_a_split_network_gives_the_same_run(single, small_images, style_loss):
    content, style = small_images
    split = StyleTransfer(weights="random", device="cpu,cpu", split_at="relu2_1")
    kw = dict(size=48, steps=4, style_loss=style_loss, style_masks=[torch.ones(1, 1, 8, 8)])
    one = single.run(content, style, **kw)
    two = split.run(content, style, **kw)
    assert torch.equal(one.image, two.image)
    assert [r["total"] for r in two.history] == [r["total"] for r in one.history]
    net = split.network(["relu1_1", "relu3_1"])
    assert net._moves == {vgg.layer_index("relu2_1"): torch.device("cpu")}


def test_two_devices_split_at_pool1_by_default():
    transfer = StyleTransfer(weights="random", device=["cpu", "cpu"])
    assert transfer.split_at == ["pool1"] and transfer.devices == [torch.device("cpu")] * 2
    assert transfer.network(["relu2_1"])._moves == {vgg.layer_index("pool1"): torch.device("cpu")}


def test_split_errors(small_images):
    with pytest.raises(NstError, match="say where to split the network over 3 devices"):
        StyleTransfer(weights="random", device="cpu,cpu,cpu")
    with pytest.raises(NstError, match="split_at needs more than one device"):
        StyleTransfer(weights="random", device="cpu", split_at="pool1")
    three = StyleTransfer(weights="random", device="cpu,cpu,cpu", split_at="relu3_1,relu2_1")
    with pytest.raises(NstError, match="split layers must be in network order"):
        three.network(["relu4_1"])
    with pytest.raises(NstError, match="unknown split layer"):
        StyleTransfer(weights="random", device="cpu,cpu", split_at="relu9_9").network(["relu4_1"])
    shallow = StyleTransfer(weights="random", device="cpu,cpu", split_at="relu4_1")
    content, style = small_images
    with pytest.raises(NstError, match="up to relu3_1"):
        shallow.stylize_tensor(content, style, size=32, steps=1, content_layers="relu3_1", style_layers="relu1_1")


def test_cli_split(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    base = [str(content), str(style), "-o", str(out), "--weights", "random", "--size", "32", "--steps", "1"]
    assert cli.main(base + ["--device", "cpu,cpu", "--split-at", "relu3_1"]) == 0 and out.exists()
    out.unlink()
    assert cli.main(base + ["--device", "cpu,cpu", "--split-at", "relu3_1,relu4_1"]) == 1
    err = capsys.readouterr().err
    assert "2 devices need 1 split layer(s), got 2" in err and "Traceback" not in err and not out.exists()
