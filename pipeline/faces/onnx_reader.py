"""Just enough of the ONNX format to take a model's weights: its Conv nodes and initializer tensors.

ONNX files are protocol buffers. This reads the wire format directly (varints and length-delimited
fields) for the few messages needed, so no `onnx` package (nor code execution of any kind) is needed
to read a shipped detector's weights. Field numbers follow onnx.proto3:
ModelProto.graph = 7; GraphProto.node = 1, initializer = 5; NodeProto.input = 1, output = 2,
name = 3, op_type = 4, attribute = 5; AttributeProto.name = 1, i = 3, ints = 8;
TensorProto.dims = 1, data_type = 2, float_data = 4, name = 8, raw_data = 9.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

_FLOAT, _INT32, _INT64 = 1, 6, 7
_DTYPES = {_FLOAT: np.float32, _INT32: np.int32, _INT64: np.int64}


class OnnxFormatError(ValueError):
    """The bytes are not the ONNX model this reader expects."""


@dataclass
class OnnxNode:
    op_type: str
    name: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    ints: dict[str, list[int]] = field(default_factory=dict)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise OnnxFormatError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, position


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one message; value is an int or the field's bytes."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
            yield number, wire, value
        elif wire == 1:
            yield number, wire, data[position : position + 8]
            position += 8
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > end:
                raise OnnxFormatError("truncated field")
            yield number, wire, data[position : position + length]
            position += length
        elif wire == 5:
            yield number, wire, data[position : position + 4]
            position += 4
        else:
            raise OnnxFormatError(f"unsupported wire type {wire}")


def _packed_ints(wire: int, value: int | bytes) -> list[int]:
    if wire == 0:
        return [int(value)]  # type: ignore[arg-type]
    numbers, position, data = [], 0, bytes(value)  # type: ignore[arg-type]
    while position < len(data):
        number, position = _varint(data, position)
        numbers.append(number)
    return numbers


def _tensor(data: bytes) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    dtype, name, raw, floats = _FLOAT, "", None, []
    for number, wire, value in _fields(data):
        if number == 1:
            dims.extend(_packed_ints(wire, value))
        elif number == 2:
            dtype = int(value)  # type: ignore[arg-type]
        elif number == 4:
            chunk = bytes(value) if wire == 2 else bytes(value)  # type: ignore[arg-type]
            floats.extend(struct.unpack(f"<{len(chunk) // 4}f", chunk))
        elif number == 8:
            name = bytes(value).decode()  # type: ignore[arg-type]
        elif number == 9:
            raw = bytes(value)  # type: ignore[arg-type]
    if dtype not in _DTYPES:
        raise OnnxFormatError(f"tensor {name!r} has unsupported data type {dtype}")
    array = np.frombuffer(raw, dtype=_DTYPES[dtype]).copy() if raw is not None else np.asarray(floats, np.float32)
    if array.size != int(np.prod(dims)):
        raise OnnxFormatError(f"tensor {name!r}: {array.size} values for shape {dims}")
    return name, array.reshape(dims)


def _node(data: bytes) -> OnnxNode:
    node = OnnxNode(op_type="", name="")
    for number, _wire, value in _fields(data):
        if number == 1:
            node.inputs.append(bytes(value).decode())  # type: ignore[arg-type]
        elif number == 2:
            node.outputs.append(bytes(value).decode())  # type: ignore[arg-type]
        elif number == 3:
            node.name = bytes(value).decode()  # type: ignore[arg-type]
        elif number == 4:
            node.op_type = bytes(value).decode()  # type: ignore[arg-type]
        elif number == 5:
            attribute_name, ints = "", []
            for a_number, a_wire, a_value in _fields(bytes(value)):  # type: ignore[arg-type]
                if a_number == 1:
                    attribute_name = bytes(a_value).decode()  # type: ignore[arg-type]
                elif a_number == 3:
                    ints = [int(a_value)]  # type: ignore[arg-type]
                elif a_number == 8:
                    ints.extend(_packed_ints(a_wire, a_value))
            node.ints[attribute_name] = ints
    return node


def read_onnx(data: bytes) -> tuple[list[OnnxNode], dict[str, np.ndarray]]:
    """The graph's nodes (in file order, which is topological) and its initializers by name."""
    graph = None
    for number, wire, value in _fields(data):
        if number == 7 and wire == 2:
            graph = bytes(value)  # type: ignore[arg-type]
    if graph is None:
        raise OnnxFormatError("no graph in the ONNX model")
    nodes: list[OnnxNode] = []
    initializers: dict[str, np.ndarray] = {}
    for number, wire, value in _fields(graph):
        if wire != 2:
            continue
        if number == 1:
            nodes.append(_node(bytes(value)))  # type: ignore[arg-type]
        elif number == 5:
            name, array = _tensor(bytes(value))  # type: ignore[arg-type]
            initializers[name] = array
    return nodes, initializers


def conv_weights(data: bytes) -> list[tuple[str, np.ndarray, np.ndarray | None, dict[str, list[int]]]]:
    """(node name, weight, bias, integer attributes) of every Conv node, in graph order. Inputs that are
    Identity copies of an initializer resolve to it; a Conv whose weight is not a constant is an error."""
    nodes, initializers = read_onnx(data)
    aliases = {n.outputs[0]: n.inputs[0] for n in nodes if n.op_type == "Identity" and n.inputs and n.outputs}

    def constant(name: str) -> np.ndarray:
        while name in aliases and name not in initializers:
            name = aliases[name]
        if name not in initializers:
            raise OnnxFormatError(f"Conv input {name!r} is not a stored tensor")
        return initializers[name]

    convs = []
    for node in nodes:
        if node.op_type != "Conv":
            continue
        bias = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        convs.append((node.name, constant(node.inputs[1]), bias, node.ints))
    return convs
