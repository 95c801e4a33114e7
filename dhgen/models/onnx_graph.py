"""Reading an ONNX file's inputs and outputs by its bytes: no onnx, no onnxruntime, no torch, no weights read.

An ONNX file is one protobuf message (`ModelProto`, onnx/onnx.proto). `graph_io` walks just enough of it to name
the graph's inputs and outputs with their element types and shapes, seeking over everything else (the weights),
so judging a 150 MB graph reads a few kilobytes. What it follows, by field number:

    ModelProto   1 ir_version, 7 graph
    GraphProto   5 initializer (TensorProto: 8 name), 11 input, 12 output (ValueInfoProto)
    ValueInfo    1 name, 2 type -> TypeProto 1 tensor_type -> 1 elem_type, 2 shape -> 1 dim -> 1 value | 2 param

Inputs that are also initializers (older exporters list the weights as inputs) are left out: nobody feeds them.
A file that is not such a message raises `NotOnnx`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# onnx.TensorProto.DataType: the element types a lip-sync graph may declare
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # protobuf wire types (3 and 4, groups, never occur in ONNX)
SMALL_MESSAGE = 1 << 20  # a ValueInfoProto is a few hundred bytes; anything this large is not one


class NotOnnx(ValueError):
    """The file is not an ONNX model (not a ModelProto with a graph)."""


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: its name, element type ("float32", ...) and shape, one entry per axis: an int for a
    fixed size, a string for a named (dynamic) one, None where the file says nothing."""

    name: str
    elem_type: str
    shape: tuple[int | str | None, ...] | None  # None: the rank is not declared


@dataclass(frozen=True)
class GraphIO:
    inputs: list[TensorInfo]  # the inputs a caller feeds (initializers left out)
    outputs: list[TensorInfo]


def graph_io(path: Path) -> GraphIO:
    """The inputs and outputs declared in the ONNX file at `path`; `NotOnnx` when it is not one."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        fields = {number: value for number, _, value in _fields(f, size)}
        if 1 not in fields or not isinstance(fields.get(7), tuple):
            raise NotOnnx("no ir_version and graph: not an ONNX model")
        start, length = fields[7]
        f.seek(start)
        return _graph(f, start + length)


def _graph(f: BinaryIO, end: int) -> GraphIO:
    inputs, outputs, initializers = [], [], set()
    for number, wire, value in _fields(f, end):
        if wire != LENGTH or number not in (5, 11, 12):
            continue
        start, length = value  # _fields seeks past the field afterwards, wherever this leaves the file
        if number == 5:
            f.seek(start)
            initializers.add(_tensor_name(f, start + length))
        else:
            (inputs if number == 11 else outputs).append(_value_info(_read(f, start, length)))
    return GraphIO([i for i in inputs if i.name not in initializers], outputs)


def _tensor_name(f: BinaryIO, end: int) -> str:
    for number, wire, value in _fields(f, end):
        if number == 8 and wire == LENGTH:
            return _read(f, *value).decode("utf-8", "replace")
    return ""


def _value_info(data: bytes) -> TensorInfo:
    fields = _message(data)
    name = fields.get(1, [b""])[0].decode("utf-8", "replace")
    tensor = _message(_message(fields.get(2, [b""])[0]).get(1, [b""])[0])
    elem = tensor.get(1, [0])[0]
    shape = None
    if 2 in tensor:
        shape = tuple(_dim(_message(d)) for d in _message(tensor[2][0]).get(1, []))
    return TensorInfo(name, ELEM_TYPES.get(elem, f"type {elem}"), shape)


def _dim(fields: dict[int, list]) -> int | str | None:
    if 1 in fields:
        return fields[1][0]
    if 2 in fields:
        return fields[2][0].decode("utf-8", "replace")
    return None


# --- protobuf wire format -------------------------------------------------------------------------------------------


def _fields(f: BinaryIO, end: int):
    """(field number, wire type, value) of each field up to `end`: an int, or (offset, length) of a
    length-delimited field, which is skipped (seek) unless the caller reads it."""
    while f.tell() < end:
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise NotOnnx("field number 0")
        if wire == VARINT:
            yield number, wire, _varint(f)
        elif wire in (FIXED64, FIXED32):
            f.seek(8 if wire == FIXED64 else 4, 1)
            yield number, wire, None
        elif wire == LENGTH:
            length, start = _varint(f), f.tell()
            if start + length > end:
                raise NotOnnx("a field runs past the end of its message")
            yield number, wire, (start, length)
            f.seek(start + length)
        else:
            raise NotOnnx(f"wire type {wire}")
    if f.tell() != end:
        raise NotOnnx("a field runs past the end of its message")


def _message(data: bytes) -> dict[int, list]:
    """A small message's fields: number -> values (ints, or bytes of length-delimited fields)."""
    f = io.BytesIO(data)
    fields: dict[int, list] = {}
    for number, wire, value in _fields(f, len(data)):
        fields.setdefault(number, []).append(_read(f, *value) if wire == LENGTH else value)
    return fields


def _read(f: BinaryIO, start: int, length: int) -> bytes:
    if length > SMALL_MESSAGE:
        raise NotOnnx(f"a {length}-byte field where a small one belongs")
    f.seek(start)
    return f.read(length)


def _varint(f: BinaryIO) -> int:
    value = 0
    for shift in range(0, 70, 7):
        byte = f.read(1)
        if not byte:
            raise NotOnnx("the file ends inside a number")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value if value < 1 << 63 else value - (1 << 64)  # int64 fields are two's complement
    raise NotOnnx("a number longer than 10 bytes")
