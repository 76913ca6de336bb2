"""An ONNX file's weights memory-mapped by ONNX Runtime, straight out of the single file.

ONNX Runtime copies the weights of a self-contained ONNX file onto its heap and, with its
layout optimisations (ORT_ENABLE_ALL: the blocked NCHWc convolution kernels), keeps both the
originals and the re-laid copies: the paper preset's 190 MB file takes ~500 MiB of peak RSS in
a bare session. Weights stored as *external data* are memory-mapped instead (onnxruntime PR
#11127) and released once re-laid; the same session then peaks at ~340 MiB and runs as fast
(tools/results/predict_memory_*.md).

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

The mapping reads a private copy, never the user's file (issue 27.2). ONNX Runtime keeps some of
the mapped pages for the session's lifetime, and a page of a file that another program
truncates or rewrites in place (`cp new.onnx model.onnx`: open with O_TRUNC, then write) is
gone: the next inference touching it dies of SIGBUS. A rename over the name is safe (the old
inode lives on), an in-place rewrite is not. So `private_copy` copies the file (a reflink where
the file system has them, FICLONE: no bytes copied) into a fresh 0700 folder beside it (in the
temporary folder when the model's folder is read-only), the skeleton points into that copy, and
the copy's name is removed as soon as ONNX Runtime holds its mapping: no other process can name
the inode, so nothing can truncate it, and the kernel frees it when the session closes. The
running command keeps the model it loaded whatever happens to the file afterwards.

The trade-off, measured on the paper preset's 190 MB ONNX (176 MB of it mapped; 2 shared cores,
ext4, 2 runs each): peak RSS 335 / 342 MiB mapping the file, 333 / 331 MiB mapping the copy
(the mapped pages are file-backed and clean either way: the kernel can drop them under
pressure); opening the session 0.52 / 0.69 s vs 0.65 / 0.53 s (the copy, ~0.1 s from the page
cache and nothing with a reflink, is within this machine's noise); the disk holds a second,
nameless copy while the session lives. Copying
beside the model keeps the copy on the model's file system, which is a disk wherever the model
file is; the temporary folder is the fallback because on a tmpfs /tmp the copy would sit in RAM.
The copy is not worth it for the heap load (files the skeleton cannot be made for, ONNX Runtime
< 1.21): ONNX Runtime reads such a file into its own memory once and never looks at it again.

Protobuf fields used (onnx.proto3): ModelProto.graph = 7; GraphProto.initializer = 5;
TensorProto.data_type = 2, raw_data = 9, external_data = 13 (StringStringEntryProto: key = 1,
value = 2), data_location = 14 (EXTERNAL = 1).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

try:
    import fcntl
except ImportError:  # not POSIX: plain copies
    fcntl = None  # type: ignore[assignment]

__all__ = ["MIN_MAPPED_BYTES", "mapped_model", "private_copy"]

FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int): a copy-on-write clone of a whole file

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


@contextlib.contextmanager
def private_copy(path: Path) -> Iterator[Path]:
    """A copy of `path` under the same name in a fresh private folder (beside `path`, else in the
    temporary folder); folder and copy are removed on exit, so a mapping made inside the block
    keeps a file nobody can name, truncate or rewrite (see the module docstring)."""
    path = Path(path)
    try:
        folder = tempfile.mkdtemp(prefix=".grefel-model-", dir=path.resolve().parent)
    except OSError:  # a read-only folder (an installed package, a mounted model store)
        folder = tempfile.mkdtemp(prefix="grefel-model-")
    try:
        copy = Path(folder) / path.name
        _clone_or_copy(path, copy)
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _clone_or_copy(src: Path, dest: Path) -> None:
    """A reflink of `src` at `dest` where the file system has them (btrfs, XFS: instant, no
    space), else a plain copy."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        try:
            if fcntl is not None:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
                return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL,
                                 errno.ENOSYS, errno.EPERM, errno.EBADF):
                raise
        shutil.copyfileobj(fin, fout, length=1 << 20)
