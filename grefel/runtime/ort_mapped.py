"""An ONNX file's weights memory-mapped by ONNX Runtime, straight out of the single file.

ONNX Runtime copies the weights of a self-contained ONNX file onto its heap and, with its
layout optimisations (ORT_ENABLE_ALL: the blocked NCHWc convolution kernels), keeps both the
originals and the re-laid copies: the paper preset's 190 MB file takes ~500 MiB of peak RSS in
a bare session. Weights stored as *external data* are memory-mapped instead (onnxruntime PR
#11127) and released once re-laid; the same session then peaks at ~340 MiB and runs as fast
(benchmarks/results/predict_memory_*.md).

`mapped_model` gets that without a second file: it walks the protobuf wire format of the file
(through `mmap`, copying nothing but the graph's small fields) and writes a skeleton ModelProto
in which each large weight (float or 8-bit integer) has its `raw_data` replaced by an
external-data reference (location = the file itself, offset and length of its bytes). The
skeleton (a few MB) is given to ONNX Runtime as bytes with the file's folder as the external
data folder (session option `session.model_external_initializers_file_folder_path`), so the
weights ONNX Runtime reads are exactly the file's bytes: outputs are bit-equal to loading the
file. Small tensors and 32/64-bit integer tensors stay inline (ONNX shape inference reads shape
constants such as Reshape's and cannot read external ones); an initializer that is external
already is left as it is. A malformed file, or one with nothing to map, gives None and the
caller loads the file as usual (as it does when ONNX Runtime refuses the skeleton).

Protobuf fields used (onnx.proto3): ModelProto.graph = 7; GraphProto.initializer = 5;
TensorProto.data_type = 2, raw_data = 9, external_data = 13 (StringStringEntryProto: key = 1,
value = 2), data_location = 14 (EXTERNAL = 1).
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

__all__ = ["MIN_MAPPED_BYTES", "mapped_model"]

MIN_MAPPED_BYTES = 4096  # smaller initializers stay inline
# TensorProto FLOAT, UINT8, INT8, FLOAT16, DOUBLE, BFLOAT16: weights. Integer shape constants
# (INT64, INT32) stay inline for shape inference.
_WEIGHT_TYPES = {1, 2, 3, 10, 11, 16}
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
Buffer = Union[mmap.mmap, bytes]
Field = Tuple[int, int, int, int, int]


class _Malformed(ValueError):
    """Not the protobuf wire format this module expects."""


def _varint(buf: Buffer, pos: int, end: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _fields(buf: Buffer, start: int, end: int) -> Iterator[Field]:
    """(field number, wire type, start of the key, start of the value, end of the field) of each
    field of the message in buf[start:end]; for length-delimited fields the value starts after
    its length prefix."""
    pos = start
    while pos < end:
        key_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, after = _varint(buf, pos, end)
            value_start, field_end = pos, after
        elif wire == _FIXED64:
            value_start, field_end = pos, pos + 8
        elif wire == _FIXED32:
            value_start, field_end = pos, pos + 4
        elif wire == _LEN:
            length, value_start = _varint(buf, pos, end)
            field_end = value_start + length
        else:  # groups (deprecated) or garbage
            raise _Malformed(f"wire type {wire}")
        if field_end > end:
            raise _Malformed("field runs past its message")
        yield number, wire, key_start, value_start, field_end
        pos = field_end


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _tensor(buf: mmap.mmap, start: int, end: int, location: bytes) -> Tuple[bytes, int]:
    """The TensorProto in buf[start:end], its raw_data made an external reference into the file
    when it is a large weight tensor; (the message, bytes made external)."""
    data_type, raw, external = 0, None, False
    kept = bytearray()  # every field but raw_data, as it is in the file
    for number, wire, key_start, value_start, field_end in _fields(buf, start, end):
        if number == 2 and wire == _VARINT:
            data_type = _varint(buf, value_start, field_end)[0]
        elif number == 9 and wire == _LEN:
            raw = (value_start, field_end)
            continue
        elif number in (13, 14):
            external = True
        kept += buf[key_start:field_end]
    if (raw is None or external or data_type not in _WEIGHT_TYPES
            or raw[1] - raw[0] < MIN_MAPPED_BYTES):
        return bytes(buf[start:end]), 0
    out = kept
    for key, value in ((b"location", location), (b"offset", str(raw[0]).encode()),
                       (b"length", str(raw[1] - raw[0]).encode())):
        out += _len_field(13, _len_field(1, key) + _len_field(2, value))
    out += _encode_varint(14 << 3 | _VARINT) + _encode_varint(1)
    return bytes(out), raw[1] - raw[0]


def _skeleton(buf: mmap.mmap, location: bytes) -> Tuple[bytes, int]:
    model, mapped, graphs = bytearray(), 0, 0
    for number, wire, key_start, value_start, field_end in _fields(buf, 0, len(buf)):
        if not (number == 7 and wire == _LEN):
            model += buf[key_start:field_end]
            continue
        graphs += 1
        graph = bytearray()
        for g_number, g_wire, g_key, g_value, g_end in _fields(buf, value_start, field_end):
            if g_number == 5 and g_wire == _LEN:
                tensor, n = _tensor(buf, g_value, g_end, location)
                graph += _len_field(5, tensor)
                mapped += n
            else:
                graph += buf[g_key:g_end]
        model += _len_field(7, bytes(graph))
    if graphs != 1:
        raise _Malformed(f"{graphs} graphs")
    return bytes(model), mapped


def mapped_model(path: Path) -> Optional[Tuple[bytes, int]]:
    """(skeleton ModelProto bytes, bytes of weights it leaves in the file) for `path`, or None
    when nothing would be mapped or the file is not what this module expects."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            skeleton, mapped = _skeleton(buf, Path(path).name.encode())
    except (OSError, ValueError):  # unreadable, empty (mmap refuses), or malformed
        return None
    return (skeleton, mapped) if mapped else None
