"""Weights from a Caffe .caffemodel file, read without Caffe or protobuf.

A .caffemodel is a serialised caffe.NetParameter. Only what the weights need is
decoded: the layers (field 2, V1LayerParameter, in old files such as
VGG_ILSVRC_19_layers.caffemodel; field 100, LayerParameter, in newer ones), each
layer's name (V1: 4; current: 1) and blobs (V1: 6; current: 7), or those of the V0
layer inside a V1 one (field 1: name 1, blobs 50) in the oldest files, and each blob's
shape (7: BlobShape, its dims in field 1; or the legacy num/channels/height/width,
1..4) and values (5: float, packed or not; 8: double). Blobs of layers nobody asked
for (the fully connected ones hold most of a VGG file) are skipped unread.
"""
import mmap
import os
from typing import Optional

import numpy as np
import torch

from ..errors import WeightsUnavailable

_V1_LAYERS, _LAYERS = 2, 100
_NAME = {_V1_LAYERS: 4, _LAYERS: 1}
_BLOBS = {_V1_LAYERS: 6, _LAYERS: 7}
_V0_LAYER = 1  # V1LayerParameter.layer: the oldest files' V0LayerParameter (name 1, blobs 50)


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int):
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("a number runs past its message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value) of one message: an int for varints, the
    (start, end) span of the bytes for everything else."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = (pos, pos + size), pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + size), pos + size
        else:
            raise _Malformed(f"unsupported wire type {wire}")
        if pos > end:
            raise _Malformed("a field runs past its message")
        yield field, wire, value


def _packed_varints(buf, span) -> list:
    out, pos = [], span[0]
    while pos < span[1]:
        value, pos = _varint(buf, pos, span[1])
        out.append(value)
    return out


def _blob(buf, span) -> torch.Tensor:
    dims, legacy, chunks = None, [0, 0, 0, 0], []
    for field, wire, value in _fields(buf, *span):
        if field == 7 and wire == 2:
            dims = []
            for f, w, v in _fields(buf, *value):
                if f == 1:
                    dims += _packed_varints(buf, v) if w == 2 else [v]
        elif field in (1, 2, 3, 4) and wire == 0:
            legacy[field - 1] = value
        elif field in (5, 8):
            chunks.append(np.frombuffer(buf[value[0]:value[1]], dtype="<f4" if field == 5 else "<f8"))
    values = np.concatenate(chunks) if chunks else np.zeros(0, dtype="<f4")
    if dims is None:
        dims = [d for d in legacy if d > 0] or [values.size]  # no dims at all: a vector
        if len(dims) > 1 and dims[:-1] == [1] * (len(dims) - 1):  # a V1 bias: 1 x 1 x 1 x N
            dims = dims[-1:]
    if int(np.prod(dims)) != values.size:
        raise _Malformed(f"a blob of shape {dims} holds {values.size} values")
    return torch.from_numpy(values.astype(np.float32).reshape(dims))


def _name_and_blobs(buf, span, name_field: int, blobs_field: int):
    name, blobs = None, []
    for field, wire, value in _fields(buf, *span):
        if field == name_field and wire == 2:
            name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
        elif field == blobs_field and wire == 2:
            blobs.append(value)
        elif (field, wire) == (_V0_LAYER, 2) and name_field == _NAME[_V1_LAYERS]:
            name, blobs = _name_and_blobs(buf, value, 1, 50)  # a V0 layer wrapped in a V1 one
    return name, blobs


def _layers(buf, wanted: Optional[set]) -> dict:
    """{layer name: [blob tensors]} of the layers in `wanted` (all when None) that have blobs."""
    out = {}
    for field, wire, value in _fields(buf, 0, len(buf)):
        if field not in _NAME or wire != 2:
            continue
        name, blobs = _name_and_blobs(buf, value, _NAME[field], _BLOBS[field])
        if name is not None and blobs and (wanted is None or name in wanted):
            out[name] = [_blob(buf, span) for span in blobs]
    return out


def _parse(file_map, wanted):
    """-> (layers, None), or (None, what is wrong); the view is released either way,
    so the map can close."""
    view = memoryview(file_map)
    try:
        return _layers(view, wanted), None
    except _Malformed as exc:
        return None, str(exc)
    finally:
        view.release()


def read(path, wanted: Optional[set] = None) -> dict:
    """{layer name: [weight, bias, ...]} from a .caffemodel; only the layers in `wanted`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as file_map:
            layers, problem = _parse(file_map, wanted)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailable(f"cannot read Caffe model {path}: {exc}".splitlines()[0]) from None
    if problem:
        raise WeightsUnavailable(f"{path} is not a Caffe model this can read: {problem}")
    return layers


def features_state(path, conv_names: dict) -> dict:
    """The state dict VGGFeatures loads ({"i.weight", "i.bias"}) from a .caffemodel,
    for conv_names {layer name: module index}, marked with the Caffe convention."""
    layers = read(path, set(conv_names))
    state = {"convention": "caffe"}
    for name, blobs in layers.items():
        index = conv_names[name]
        state[f"{index}.weight"] = blobs[0]
        if len(blobs) > 1:
            state[f"{index}.bias"] = blobs[1]
    return state
