"""NIN (Network-in-Network): its layout, neural-style-pt's weight file, defaults, a run."""
import pytest
import torch
from PIL import Image
from torch import nn

from nst_fast import StyleTransfer
from nst_fast.app import cli
from nst_fast.errors import NstError, WeightsUnavailable
from nst_fast.nets import vgg
from nst_fast.optimize.options import NIN_LAYERS, NIN_MRF_STYLE_LAYERS, Options

RELUS = ["relu0", "relu1", "relu2", "relu3", "relu5", "relu6", "relu7", "relu8", "relu9", "relu10", "relu11", "relu12"]


def _neural_style_pt_nin() -> nn.Sequential:
    """NIN's features as neural-style-pt's CaffeLoader lays them out, written out here
    independently of nst_fast."""
    def pool():
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.ReLU(), nn.Conv2d(96, 96, 1), nn.ReLU(), nn.Conv2d(96, 96, 1), nn.ReLU(), pool(),
        nn.Conv2d(96, 256, 5, 1, 2), nn.ReLU(), nn.Conv2d(256, 256, 1), nn.ReLU(), nn.Conv2d(256, 256, 1), nn.ReLU(),
        pool(),
        nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(), nn.Conv2d(384, 384, 1), nn.ReLU(), nn.Conv2d(384, 384, 1), nn.ReLU(),
        pool(), nn.Dropout(0.5),
        nn.Conv2d(384, 1024, 3, 1, 1), nn.ReLU(), nn.Conv2d(1024, 1024, 1), nn.ReLU(), nn.Conv2d(1024, 1000, 1),
        nn.ReLU(), nn.AvgPool2d(6, 1, ceil_mode=True), nn.Softmax(dim=1)).eval()


def test_weight_file_in_neural_style_pt_layout(tmp_path):
    torch.manual_seed(0)
    model = _neural_style_pt_nin()
    path = tmp_path / "nin_imagenet.pth"
    torch.save({f"features.{k}": v for k, v in model.state_dict().items()}, path)
    state, convention, _ = vgg.load_weights(str(path), network="nin")
    assert convention == "caffe"  # Caffe's weights, whatever the file is called
    net = vgg.VGGFeatures(["relu3", "relu7", "relu12"], state, convention, network="nin")
    image = torch.rand(1, 3, 83, 101, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = net(image)
        x = image.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
        for i, module in enumerate(model[:28]):
            x = module(x)
            name = {8: "relu3", 15: "relu7", 27: "relu12"}.get(i)
            if name:
                torch.testing.assert_close(got[name], x, rtol=1e-3, atol=1e-4 * x.abs().max().item())


def test_layer_shapes_and_smallest_input():
    state, _, _ = vgg.load_weights("random", network="nin")
    names = RELUS + ["pool1", "pool2", "pool3"]
    net = vgg.VGGFeatures(names, state, network="nin")
    side = vgg.min_side(["relu12"], "nin")
    for h, w in ((side, side), (97, 131), (64, 200)):
        with torch.no_grad():
            out = net(torch.rand(1, 3, h, w))
        for name in names:
            assert tuple(out[name].shape[1:]) == vgg.layer_shape(name, h, w, "nin"), (name, h, w)
    with pytest.raises(RuntimeError):  # one pixel less and pool3 has no output
        net(torch.rand(1, 3, side - 1, side - 1))
    assert vgg.min_side(["relu0"], "nin") == 11  # conv1's kernel


def test_another_networks_file_is_refused_by_shape(random_weights_file):
    state, _, _ = vgg.load_weights(str(random_weights_file), network="nin")  # a VGG-19
    with pytest.raises(WeightsUnavailable, match=r"do not fit NIN: features.0.weight is 64x3x3x3, "
                                                 r"NIN's conv1 needs 96x3x11x11"):
        vgg.VGGFeatures(["relu0"], state, network="nin")


def test_no_torchvision_weights():
    with pytest.raises(WeightsUnavailable, match="nin_imagenet.pth"):
        vgg.load_weights("imagenet", network="nin")


def test_default_layers_and_errors():
    opts = Options().resolve(network="nin")
    assert opts.content_layers == NIN_LAYERS and opts.style_layers == NIN_LAYERS
    assert Options(style_loss="mrf").resolve(network="nin").style_layers == NIN_MRF_STYLE_LAYERS
    assert Options().resolve().content_layers == {"relu4_2": 1.0}
    with pytest.raises(NstError, match=r"NIN layers are conv1, relu0, \.\.\. relu12, pool1\.\.pool3"):
        Options(content_layers="relu4_2").resolve(network="nin")
    weights = Options(normalize_weights=True).resolve(network="nin").style_layers
    assert weights["relu0"] / weights["relu12"] == pytest.approx(1000 / 96)  # channels: 96 and 1000


@pytest.mark.slow
@pytest.mark.parametrize("style_loss", ["gram", "mrf"])
def test_stylizes_end_to_end(small_images, style_loss):
    transfer = StyleTransfer(weights="random", device="cpu", network="nin")
    content, style = small_images
    totals = []
    size = 64 if style_loss == "gram" else 160  # the MRF needs 3x3 patches at relu7 (1/16)
    img = transfer.stylize(content, style, size=size, steps=10, style_loss=style_loss,
                           callback=lambda i: totals.append(float(i.losses["total"])))
    assert img.size == (size, size * 3 // 4) and totals[-1] < 0.5 * totals[0]
    with pytest.raises(NstError, match="at least 39 pixels"):
        transfer.stylize(content, style, size=32, steps=1)


def test_cli(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu",
                     "--size", "64", "--steps", "2", "--network", "nin"])
    assert code == 0 and "RANDOM NIN weights" in capsys.readouterr().err
    assert Image.open(out).size == (64, 48)
    code = cli.main([str(content), str(style), "-o", str(tmp_path / "bad.png"), "--weights", "random",
                     "--device", "cpu", "--size", "64", "--network", "nin", "--style-layers", "relu4_1"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 1 and len(errors) == 1 and "NIN layers" in errors[0]
    assert not (tmp_path / "bad.png").exists()


def test_list_layers(capsys):
    assert cli.main(["--list-layers", "--network", "nin", "--size", "97"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "NIN at 97x97 px:" and len(lines) == 1 + len(vgg.layer_names("nin"))
    c, h, w = vgg.layer_shape("relu12", 97, 97, "nin")
    assert lines[-1].split() == ["relu12", "relu", str(c), "x", str(h), "x", str(w)]
