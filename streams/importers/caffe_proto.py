"""The few caffe.proto messages needed to read and write a `.caffemodel`, built at runtime.

A `.caffemodel` is a serialised `caffe.NetParameter`. Only the fields that carry weights are declared
here, with caffe.proto's field numbers (BVLC caffe `src/caffe/proto/caffe.proto`); protobuf skips every
other field (convolution_param, bn_param, ...) as unknown, which is exactly what an importer wants and
means no `protoc` and no copy of caffe.proto are needed. V1LayerParameter's `type` is a `LayerType`
enum in caffe.proto; it is declared as int32 here (the same varint on the wire) so that layer types
missing from the enum, such as P3D's custom BN layer, still parse.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "p3d_two_stream.caffe"

_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_T = descriptor_pb2.FieldDescriptorProto

# message name -> [(field name, number, label, type, message type name or None, packed)]
_MESSAGES: dict[str, list[tuple[str, int, int, int, str | None, bool]]] = {
    "BlobShape": [
        ("dim", 1, _REPEATED, _T.TYPE_INT64, None, True),
    ],
    "BlobProto": [
        ("num", 1, _OPTIONAL, _T.TYPE_INT64, None, False),
        ("channels", 2, _OPTIONAL, _T.TYPE_INT64, None, False),
        ("height", 3, _OPTIONAL, _T.TYPE_INT64, None, False),
        ("width", 4, _OPTIONAL, _T.TYPE_INT64, None, False),
        ("data", 5, _REPEATED, _T.TYPE_FLOAT, None, True),
        ("diff", 6, _REPEATED, _T.TYPE_FLOAT, None, True),
        ("shape", 7, _OPTIONAL, _T.TYPE_MESSAGE, "BlobShape", False),
        ("double_data", 8, _REPEATED, _T.TYPE_DOUBLE, None, True),
        ("double_diff", 9, _REPEATED, _T.TYPE_DOUBLE, None, True),
    ],
    "LayerParameter": [
        ("name", 1, _OPTIONAL, _T.TYPE_STRING, None, False),
        ("type", 2, _OPTIONAL, _T.TYPE_STRING, None, False),
        ("bottom", 3, _REPEATED, _T.TYPE_STRING, None, False),
        ("top", 4, _REPEATED, _T.TYPE_STRING, None, False),
        ("blobs", 7, _REPEATED, _T.TYPE_MESSAGE, "BlobProto", False),
    ],
    "V1LayerParameter": [
        ("bottom", 2, _REPEATED, _T.TYPE_STRING, None, False),
        ("top", 3, _REPEATED, _T.TYPE_STRING, None, False),
        ("name", 4, _OPTIONAL, _T.TYPE_STRING, None, False),
        ("type", 5, _OPTIONAL, _T.TYPE_INT32, None, False),
        ("blobs", 6, _REPEATED, _T.TYPE_MESSAGE, "BlobProto", False),
    ],
    "NetParameter": [
        ("name", 1, _OPTIONAL, _T.TYPE_STRING, None, False),
        ("layers", 2, _REPEATED, _T.TYPE_MESSAGE, "V1LayerParameter", False),
        ("layer", 100, _REPEATED, _T.TYPE_MESSAGE, "LayerParameter", False),
    ],
}

# caffe.proto V1LayerParameter.LayerType values of the layers that hold weights.
V1_CONVOLUTION = 4
V1_INNER_PRODUCT = 14


def _build_classes() -> dict[str, type]:
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="p3d_two_stream/caffe_minimal.proto", package=_PACKAGE, syntax="proto2")
    for message_name, fields in _MESSAGES.items():
        message = file_proto.message_type.add(name=message_name)
        for name, number, label, type_, type_name, packed in fields:
            field = message.field.add(name=name, number=number, label=label, type=type_)
            if type_name is not None:
                field.type_name = f".{_PACKAGE}.{type_name}"
            if packed:
                field.options.packed = True
    # A private pool: no clash with a real `caffe` package (pycaffe) loaded in the same process.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in _MESSAGES}


_CLASSES = _build_classes()
BlobShape = _CLASSES["BlobShape"]
BlobProto = _CLASSES["BlobProto"]
LayerParameter = _CLASSES["LayerParameter"]
V1LayerParameter = _CLASSES["V1LayerParameter"]
NetParameter = _CLASSES["NetParameter"]
