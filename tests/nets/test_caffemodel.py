"""Caffe .caffemodel weights: files serialised by Google's protobuf from caffe.proto's
field numbers, in the old (V1 `layers`) and the current (`layer`) layout."""
import pytest
import torch

from nst_fast.errors import WeightsUnavailable
from nst_fast.nets import caffemodel, vgg

protobuf = pytest.importorskip("google.protobuf")
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

F = descriptor_pb2.FieldDescriptorProto


def _net_class(packed: bool):
    """caffe.NetParameter with the fields a .caffemodel's weights use (caffe.proto's
    numbers; V1's layer type enum declared as int32, the same on the wire)."""
    proto = descriptor_pb2.FileDescriptorProto(name=f"caffe_{packed}.proto", package=f"caffe{int(packed)}",
                                               syntax="proto2")

    def message(name, *fields):
        m = proto.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in fields:
            field = m.field.add(name=field_name, number=number, type=kind,
                                label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if type_name:
                field.type_name = f".{proto.package}.{type_name}"
            if repeated and kind in (F.TYPE_FLOAT, F.TYPE_DOUBLE, F.TYPE_INT64):
                field.options.packed = packed

    message("BlobShape", ("dim", 1, F.TYPE_INT64, True, None))
    message("BlobProto", ("num", 1, F.TYPE_INT32, False, None), ("channels", 2, F.TYPE_INT32, False, None),
            ("height", 3, F.TYPE_INT32, False, None), ("width", 4, F.TYPE_INT32, False, None),
            ("data", 5, F.TYPE_FLOAT, True, None), ("shape", 7, F.TYPE_MESSAGE, False, "BlobShape"),
            ("double_data", 8, F.TYPE_DOUBLE, True, None))
    message("LayerParameter", ("name", 1, F.TYPE_STRING, False, None), ("type", 2, F.TYPE_STRING, False, None),
            ("bottom", 3, F.TYPE_STRING, True, None), ("blobs", 7, F.TYPE_MESSAGE, True, "BlobProto"))
    message("V0LayerParameter", ("name", 1, F.TYPE_STRING, False, None), ("type", 2, F.TYPE_STRING, False, None),
            ("blobs", 50, F.TYPE_MESSAGE, True, "BlobProto"))
    message("V1LayerParameter", ("layer", 1, F.TYPE_MESSAGE, False, "V0LayerParameter"),
            ("bottom", 2, F.TYPE_STRING, True, None), ("name", 4, F.TYPE_STRING, False, None),
            ("type", 5, F.TYPE_INT32, False, None), ("blobs", 6, F.TYPE_MESSAGE, True, "BlobProto"))
    message("NetParameter", ("name", 1, F.TYPE_STRING, False, None),
            ("layers", 2, F.TYPE_MESSAGE, True, "V1LayerParameter"),
            ("layer", 100, F.TYPE_MESSAGE, True, "LayerParameter"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{proto.package}.NetParameter"))


def _fill_blob(blob, tensor, v1, double=False, dims=True):
    if not dims:  # no dims at all: read as a vector
        pass
    elif v1:  # the legacy 4-D dims; a bias is 1 x 1 x 1 x N
        dims = [1] * (4 - tensor.dim()) + list(tensor.shape)
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(tensor.shape)
    (blob.double_data if double else blob.data).extend(tensor.flatten().tolist())


def _write(path, state, network, v1=True, packed=True, double=False, bias_dims=True, v0=False):
    """state: {module index: (weight, bias)} -> a .caffemodel with those conv layers by
    name, between layers without blobs and a fully connected layer nobody asks for."""
    net = _net_class(packed)()
    net.name = "test"
    add = (lambda: net.layers.add()) if v1 else (lambda: net.layer.add())
    add().name = "data"
    table = vgg.TABLES[network]
    for i, (weight, bias) in state.items():
        layer = add()
        if v0:  # the V1 layer only wraps a V0 one, which holds the name and the blobs
            layer = layer.layer
            layer.type = "conv"
        elif v1:
            layer.type = 4  # CONVOLUTION
        else:
            layer.type = "Convolution"
        layer.name = table[i].name
        _fill_blob(layer.blobs.add(), weight, v1, double)
        _fill_blob(layer.blobs.add(), bias, v1, double, dims=bias_dims)
        relu = add()
        relu.name = table[i + 1].name
    fc = add()
    fc.name = "fc6"
    _fill_blob(fc.blobs.add(), torch.ones(4, 6), v1)
    path.write_bytes(net.SerializeToString())


def _convs(network, upto=None):
    state = vgg.random_state(network=network)
    return {i: (state[f"{i}.weight"], state[f"{i}.bias"]) for i, layer in enumerate(vgg.TABLES[network][:upto])
            if layer.kind == "conv"}


@pytest.mark.parametrize("v1, v0", [(True, False), (False, False), (True, True)],
                         ids=["V1 layers", "layer", "V0 in V1 layers"])
@pytest.mark.slow
def test_vgg19_weights_by_layer_name(tmp_path, v1, v0):
    convs = _convs("vgg19")
    path = tmp_path / "VGG_ILSVRC_19_layers.caffemodel"
    _write(path, convs, "vgg19", v1=v1, v0=v0)
    state, convention, _ = vgg.load_weights(str(path))
    assert convention == "caffe"
    assert set(state) == {f"{i}.{p}" for i in convs for p in ("weight", "bias")}  # fc6 left out
    for i, (weight, bias) in convs.items():
        assert torch.equal(state[f"{i}.weight"], weight) and torch.equal(state[f"{i}.bias"], bias)
    image = torch.rand(1, 3, 32, 32)
    by_index = {f"{i}.{p}": t for i, wb in convs.items() for p, t in zip(("weight", "bias"), wb)}
    want = vgg.VGGFeatures(["relu5_1"], by_index, "caffe")(image)["relu5_1"]
    assert torch.equal(vgg.VGGFeatures(["relu5_1"], state, convention)(image)["relu5_1"], want)


def test_nin_unpacked_and_double_values_and_biases_without_dims(tmp_path):
    convs = _convs("nin", upto=vgg.layer_index("relu3", "nin") + 1)
    for packed, double in ((False, False), (True, True)):
        path = tmp_path / f"nin_{packed}_{double}.caffemodel"
        _write(path, convs, "nin", packed=packed, double=double, bias_dims=False)
        state, convention, _ = vgg.load_weights(str(path), network="nin")
        assert convention == "caffe" and len(state) == 2 * len(convs)
        for i, (weight, bias) in convs.items():
            torch.testing.assert_close(state[f"{i}.weight"], weight, rtol=0, atol=0)
            torch.testing.assert_close(state[f"{i}.bias"], bias, rtol=0, atol=0)
        with pytest.raises(WeightsUnavailable, match="lack layers needed for relu7: its deepest layer is conv2"):
            vgg.VGGFeatures(["relu7"], state, convention, network="nin")


def test_another_networks_file_and_broken_files(tmp_path):
    path = tmp_path / "vgg.caffemodel"
    _write(path, _convs("vgg19", upto=4), "vgg19")
    with pytest.raises(WeightsUnavailable, match="holds none of NIN's conv layers"):
        vgg.load_weights(str(path), network="nin")
    data = path.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsUnavailable, match="not a Caffe model this can read"):
        vgg.load_weights(str(cut))
    with pytest.raises(WeightsUnavailable, match="not found"):
        vgg.load_weights(str(tmp_path / "missing.caffemodel"))
    assert caffemodel.read(path, {"conv1_1"}).keys() == {"conv1_1"}
