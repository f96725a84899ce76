"""Loading VGG-19 weights through the real paths: files, conventions, partial files, errors."""
import pytest
import torch
import torchvision
from conftest import SHARED_WEIGHTS

from nst_fast.errors import NstError, WeightsUnavailable
from nst_fast.nets import vgg


def _reference_relu3_1(model, image):
    x = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return model.features[:12](x)


def test_full_state_dict_round_trip(random_weights_file):
    state, convention, _ = vgg.load_weights(str(random_weights_file))
    assert convention == "torchvision"
    net = vgg.VGGFeatures(["relu3_1"], state, convention)
    model = torchvision.models.vgg19()
    model.load_state_dict(torch.load(random_weights_file, weights_only=True))
    image = torch.rand(1, 3, 32, 40)
    torch.testing.assert_close(net(image)["relu3_1"], _reference_relu3_1(model, image))


def test_weights_as_a_path_object_and_a_clear_error_for_other_types(random_weights_file):
    import pathlib

    by_path = vgg.load_weights(pathlib.Path(random_weights_file))[0]
    assert torch.equal(by_path["0.weight"], vgg.load_weights(str(random_weights_file))[0]["0.weight"])
    with pytest.raises(NstError, match="weights must be 'imagenet', 'random' or a file path, got int"):
        vgg.load_weights(42)


def test_unreadable_weights_files_say_why_in_a_line(tmp_path, random_weights_file):
    whole_model = tmp_path / "model.pth"
    torch.save(torchvision.models.vgg11(), whole_model)  # the model pickled, not its state dict
    cut = tmp_path / "cut.pth"
    cut.write_bytes(random_weights_file.read_bytes()[:4096])
    text = tmp_path / "text.pth"
    text.write_text("not weights")
    for path, why in [(whole_model, "it holds a torchvision.models.vgg.VGG object, and only tensors are read from "
                                    "a file (no code runs); save the model's state_dict() instead"),
                      (cut, "the file is cut short or corrupt (download it again)"),
                      (text, "it is not a PyTorch weights file")]:
        with pytest.raises(WeightsUnavailable) as caught:
            vgg.load_weights(str(path))
        assert str(caught.value) == f"cannot read weights file {path}: {why}"


def test_weights_with_nan_are_refused_before_the_run(tmp_path, random_weights_file):
    state = torch.load(random_weights_file, weights_only=True)
    state["features.5.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(WeightsUnavailable, match=r"are damaged: features\.5\.weight \(conv2_1\) holds NaN"):
        vgg.VGGFeatures(["relu3_1"], *vgg.load_weights(str(tmp_path / "nan.pth"))[:2])
    vgg.VGGFeatures(["relu1_2"], *vgg.load_weights(str(tmp_path / "nan.pth"))[:2])  # a layer it does not use


def test_features_only_state_dict(tmp_path, random_weights_file):
    full = torch.load(random_weights_file, weights_only=True)
    features = {k.removeprefix("features."): v for k, v in full.items() if k.startswith("features.")}
    path = tmp_path / "features.pth"
    torch.save(features, path)
    state, _, _ = vgg.load_weights(str(path))
    net = vgg.VGGFeatures(["relu2_1"], state)
    assert torch.equal(net.net[0].weight, full["features.0.weight"])


def test_partial_file_names_its_deepest_layer(tmp_path, random_weights_file):
    full = torch.load(random_weights_file, weights_only=True)
    keep = {k: v for k, v in full.items() if k.startswith("features.") and int(k.split(".")[1]) <= 7}
    path = tmp_path / "partial.pth"
    torch.save(keep, path)
    state, _, _ = vgg.load_weights(str(path))
    vgg.VGGFeatures(["relu2_2"], state)  # every requested layer present: fine
    with pytest.raises(WeightsUnavailable, match="deepest layer is conv2_2"):
        vgg.VGGFeatures(["relu3_1"], state, source=str(path))


def test_missing_and_wrong_files(tmp_path):
    with pytest.raises(WeightsUnavailable, match="not found"):
        vgg.load_weights(str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="cannot read"):
        vgg.load_weights(str(junk))
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(WeightsUnavailable, match="no VGG-19 features"):
        vgg.load_weights(str(other))
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "features.0.bias": torch.zeros(8)}, wrong)
    state, _, _ = vgg.load_weights(str(wrong))
    with pytest.raises(WeightsUnavailable, match="do not fit"):
        vgg.VGGFeatures(["relu1_1"], state)


def test_environment_variable_chooses_weights(monkeypatch, random_weights_file):
    monkeypatch.setenv("NST_FAST_WEIGHTS", str(random_weights_file))
    assert vgg.resolve_weights(None) == str(random_weights_file)
    assert vgg.resolve_weights("random") == "random"


def test_random_weights_are_seeded():
    a, _, _ = vgg.load_weights("random", seed=3)
    b, _, _ = vgg.load_weights("random", seed=3)
    c, _, _ = vgg.load_weights("random", seed=4)
    assert torch.equal(a["0.weight"], b["0.weight"])
    assert not torch.equal(a["0.weight"], c["0.weight"])


def test_unknown_layer_and_pooling():
    state, _, _ = vgg.load_weights("random")
    with pytest.raises(NstError, match="unknown layer 'relu9_9'"):
        vgg.VGGFeatures(["relu9_9"], state)
    with pytest.raises(NstError, match="pooling"):
        vgg.VGGFeatures(["relu1_1"], state, pooling="median")


def test_caffe_convention_preprocessing(tmp_path, random_weights_file):
    """A Caffe-convention file sees BGR 0..255 minus the mean: the same net as a
    torchvision-convention one whose first conv absorbs that transform."""
    full = torch.load(random_weights_file, weights_only=True)
    path = tmp_path / "vgg19_caffe_test.pth"
    torch.save(full, path)
    state, convention, _ = vgg.load_weights(str(path))
    assert convention == "caffe"
    net = vgg.VGGFeatures(["conv1_1"], state, convention)
    image = torch.rand(1, 3, 8, 8)
    mean_bgr = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    caffe_input = image.flip(1) * 255 - mean_bgr
    want = torch.nn.functional.conv2d(caffe_input, full["features.0.weight"], full["features.0.bias"], padding=1)
    torch.testing.assert_close(net(image)["conv1_1"], want, rtol=1e-4, atol=1e-3)


def test_state_dict_keyed_by_layer_name(tmp_path):
    """As Gatys et al.'s own PyTorch weights (vgg_conv.pth) and Caffe conversions are:
    conv1_1.weight, ...; Caffe's convention unless the file says otherwise."""
    state = vgg.random_state()
    names = vgg.layer_names()
    path = tmp_path / "vgg_conv.pth"
    torch.save({f"{names[int(k.split('.')[0])]}.{k.split('.')[1]}": v for k, v in state.items()}, path)
    loaded, convention, _ = vgg.load_weights(str(path))
    assert convention == "caffe" and loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert vgg.load_weights(str(path), convention="torchvision")[1] == "torchvision"
    with pytest.raises(WeightsUnavailable, match="keys like features.0.weight or conv1.weight"):
        vgg.load_weights(str(path), network="nin")


def test_conv_layer_output_is_not_overwritten_by_inplace_relu():
    state, _, _ = vgg.load_weights("random")
    net = vgg.VGGFeatures(["conv1_1", "relu1_2"], state)
    out = net(torch.rand(1, 3, 16, 16))
    assert (out["conv1_1"] < 0).any()


def test_layer_names():
    assert vgg.LAYER_NAMES[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert vgg.LAYER_NAMES[-1] == "pool5" and len(vgg.LAYER_NAMES) == 37
    assert vgg.layer_shape("relu5_1", 64, 80) == (512, 4, 5) and vgg.layer_channels("relu3_1") == 256
    assert vgg.min_side(["relu1_1", "relu5_1"]) == 16 and vgg.min_side(["pool5"]) == 32


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="shared pretrained weights absent")
def test_shared_caffe_weights_load():
    state, convention, _ = vgg.load_weights(str(SHARED_WEIGHTS))
    assert convention == "caffe"
    with pytest.raises(WeightsUnavailable, match="deepest layer is conv3_4"):
        vgg.VGGFeatures(["relu4_2"], state)


# ---- VGG-16

def test_vgg16_layer_names():
    names = vgg.layer_names("vgg16")
    assert len(names) == 31 and names[-2:] == ["relu5_3", "pool5"] and "conv3_4" not in names
    assert vgg.layer_shape("pool3", 64, 64, "vgg16")[1:] == (8, 8) == vgg.layer_shape("relu4_3", 64, 64, "vgg16")[1:]
    with pytest.raises(NstError, match="VGG-16 layers are conv1_1, relu1_1, ... relu5_3"):
        vgg.check_layer_names(["relu3_4"], network="vgg16")
    with pytest.raises(NstError, match="network must be one of vgg19, vgg16, vgg13, vgg11, alexnet, nin"):
        vgg.load_weights("random", network="resnet50")


# torchvision's features index just past each block's last ReLU, and that ReLU's name.
_BLOCK_ENDS = {"vgg16": (("relu3_3", 16), ("relu4_3", 23), ("relu5_3", 30)),
               "vgg13": (("relu3_2", 14), ("relu4_2", 19), ("relu5_2", 24)),
               "vgg11": (("relu3_2", 10), ("relu4_2", 15), ("relu5_2", 20)),
               "alexnet": (("relu1", 2), ("pool1", 3), ("relu2", 5), ("relu4", 10), ("pool5", 13))}


@pytest.mark.slow
@pytest.mark.parametrize("network", ["vgg16", "vgg13", "vgg11", "alexnet"])
def test_other_torchvision_networks_match_torchvision(tmp_path, network):
    torch.manual_seed(1)
    model = getattr(torchvision.models, network)().eval()
    path = tmp_path / f"{network}.pth"
    torch.save(model.state_dict(), path)
    state, convention, _ = vgg.load_weights(str(path))
    ends = _BLOCK_ENDS[network]
    net = vgg.VGGFeatures([name for name, _ in ends], state, convention, network=network)
    image = torch.rand(1, 3, 70, 83, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = net(image)
        x = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        for name, end in ends:
            want = model.features[:end](x)
            assert ((out[name] - want).abs().max() / want.abs().max()).item() < 1e-4
    # Nor is such a file a VGG-19: the error says what does not fit.
    with pytest.raises(WeightsUnavailable, match="do not fit VGG-19|lack layers"):
        vgg.VGGFeatures(["relu4_1"], state)


@pytest.mark.slow
def test_vgg16_stylizes_end_to_end_and_costs_less_memory(small_images):
    from nst_fast import StyleTransfer
    from nst_fast.optimize import memory

    transfer = StyleTransfer(weights="random", device="cpu", network="vgg16")
    content, style = small_images
    totals = []
    img = transfer.stylize(content, style, size=48, steps=10, init="noise",
                           callback=lambda i: totals.append(float(i.losses["total"])))
    assert img.size == (48, 36) and totals[0] / totals[-1] > 10
    with pytest.raises(NstError, match="VGG-16 layers"):
        transfer.stylize(content, style, size=48, steps=1, style_layers="relu5_4")
    layers = (["relu4_2"], ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"])
    assert memory.estimate_bytes(512, 512, *layers, network="vgg16") < memory.estimate_bytes(512, 512, *layers)


@pytest.mark.slow
def test_vgg11_and_vgg13_stylize_and_cost_less_than_deeper_vggs(small_images, capsys, tmp_path):
    from nst_fast.app import cli
    from nst_fast.optimize import memory

    content, style = small_images
    for network in ("vgg13", "vgg11"):
        out = tmp_path / f"{network}.png"
        code = cli.main([str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu",
                         "--size", "48", "--steps", "3", "-q", "--network", network])
        assert code == 0, capsys.readouterr().err
        assert out.exists()
    layers = (["relu4_2"], ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"])
    sizes = [memory.estimate_bytes(512, 512, *layers, network=n) for n in ("vgg11", "vgg13", "vgg16", "vgg19")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_alexnet_layers_defaults_and_end_to_end(small_images, capsys, tmp_path):
    from nst_fast.app import cli
    from nst_fast.optimize import options

    names = vgg.layer_names("alexnet")
    assert names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "conv4", "relu4",
                     "conv5", "relu5", "pool5"]  # pystiche's names for torchvision's alexnet().features
    assert vgg.layer_shape("relu5", 512, 512, "alexnet") == (256, 31, 31)
    assert vgg.min_side(["relu5"], "alexnet") == 31
    content_layers, style_layers = options.default_layers("alexnet")
    assert list(content_layers) == ["relu4"] and list(style_layers) == [f"relu{i}" for i in range(1, 6)]
    assert list(options.default_layers("alexnet", "mrf")[1]) == ["relu2", "relu3"]
    content, style = small_images
    out = tmp_path / "alexnet.png"
    args = [str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu", "--steps", "3",
            "-q", "--network", "alexnet"]
    assert cli.main(args + ["--size", "64"]) == 0, capsys.readouterr().err
    assert out.exists()
    assert cli.main(args + ["--size", "24"]) == 1
    assert "layers down to relu5 need at least 31 pixels per side" in capsys.readouterr().err
    with pytest.raises(NstError, match="AlexNet layers are conv1, relu1, ... relu5, pool1..pool5"):
        vgg.check_layer_names(["relu1_1"], network="alexnet")
