"""Read MXNet's NDArray list format (what Gluon's `save_parameters` and `mx.nd.save` write) without MXNet.

The layout, all little-endian (MXNet's src/ndarray/ndarray.cc, `NDArray::Save`):

    uint64 0x112 (the list magic), uint64 0 (reserved)
    uint64 N, then N arrays, each:
        uint32 array magic: 0xF993FAC9 (V2) or 0xF993FACA (V3, NumPy shape semantics)
        int32  storage type (0 = dense; sparse arrays add aux data and are not supported)
        int32  ndim, int64 dims[ndim]          (ndim 0 in V2 means "no data": nothing follows)
        int32  device type, int32 device id    (where the array lived; ignored)
        int32  dtype flag (0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64, ...)
        the raw values, prod(dims) * itemsize bytes, C order
    uint64 K, then K names, each uint64 length + UTF-8 bytes (K is N, or 0 for an unnamed list)

Older files use 0xF993FAC8 (V1: no storage type) or begin straight with a uint32 ndim and uint32 dims
(before V1); both are read too.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import BertkitError

LIST_MAGIC = 0x112
V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?", 8: "<i2", 9: "<u2", 10: "<u4", 11: "<u8"}


class _Reader:
    """A bounds-checked cursor over the file's bytes; running off the end names what was being read."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.pos = path, data, 0
        self.what = "the file header"

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BertkitError(
                f"{self.path}: truncated: {self.what} needs {n} bytes at offset {self.pos}, "
                f"the file has {len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def is_mxnet_params(path: str | Path) -> bool:
    """Whether the file starts with the NDArray list magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return len(head) == 16 and struct.unpack("<QQ", head) == (LIST_MAGIC, 0)


def read_params(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array for every array of a `.params` file (Gluon's structural names, e.g.
    `encoder.transformer_cells.0.proj.weight`). A file of another format, a truncated file or an
    unsupported array is a one-line `BertkitError` naming the file (and the array)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BertkitError(f"{path}: cannot read: {e.strerror}") from None
    r = _Reader(path, data)
    if len(data) < 16 or struct.unpack("<QQ", data[:16]) != (LIST_MAGIC, 0):
        raise BertkitError(f"{path}: not an MXNet .params file (it does not start with the NDArray list magic 0x112)")
    r.take(16)
    (count,) = r.unpack("<Q")
    if count > len(data):  # each array takes at least a few bytes: a huge count is garbage
        raise BertkitError(f"{path}: corrupt header: it claims {count} arrays in {len(data)} bytes")
    arrays = []
    for i in range(count):
        r.what = f"array {i} of {count} (names are stored after the arrays)"
        arrays.append(_read_array(r, i))
    r.what = "the array names"
    (n_names,) = r.unpack("<Q")
    if n_names not in (0, count):
        raise BertkitError(f"{path}: corrupt file: {count} arrays but {n_names} names")
    names = []
    for i in range(n_names):
        r.what = f"the name of array {i}"
        (length,) = r.unpack("<Q")
        try:
            names.append(r.take(length).decode("utf-8"))
        except UnicodeDecodeError:
            raise BertkitError(f"{path}: corrupt file: the name of array {i} is not UTF-8") from None
    if not names:
        raise BertkitError(f"{path}: the arrays have no names; bertkit needs Gluon's named parameters")
    # Names are only known at the end of the file: errors about an array's contents are raised here.
    out = {}
    for name, arr in zip(names, arrays):
        if isinstance(arr, BertkitError):
            raise BertkitError(str(arr).replace("{name}", name))
        out[name.removeprefix("arg:").removeprefix("aux:")] = arr
    return out


def _read_array(r: _Reader, index: int):
    (magic,) = r.unpack("<I")
    if magic in (V2, V3):
        (stype,) = r.unpack("<i")
        if stype != 0:
            return BertkitError(f"{r.path}: tensor {{name}} is a sparse array (storage type {stype}); only dense arrays are read")
        shape = _read_shape(r, "<i", "<q")
        if magic == V2 and len(shape) == 0:
            return np.zeros((0,), dtype=np.float32)  # an empty (uninitialised) array: no context, type or data
    elif magic == V1:
        shape = _read_shape(r, "<I", "<q")
        if len(shape) == 0:
            return np.zeros((0,), dtype=np.float32)
    else:
        # Before V1 the array began with its uint32 ndim, followed by uint32 dims.
        r.pos -= 4
        shape = _read_shape(r, "<I", "<I")
        if len(shape) == 0:
            return np.zeros((0,), dtype=np.float32)
    r.unpack("<ii")  # device type and id
    (flag,) = r.unpack("<i")
    if flag not in DTYPES:
        return BertkitError(f"{r.path}: tensor {{name}} has an unknown dtype flag {flag}")
    dtype = np.dtype(DTYPES[flag])
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    raw = r.take(size * dtype.itemsize)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _read_shape(r: _Reader, ndim_fmt: str, dim_fmt: str) -> tuple[int, ...]:
    (ndim,) = r.unpack(ndim_fmt)
    if ndim < 0 or ndim > 32:
        raise BertkitError(f"{r.path}: corrupt file: {r.what} has {ndim} dimensions")
    dims = r.unpack("<" + dim_fmt[1] * ndim) if ndim else ()
    if any(d < 0 for d in dims):
        raise BertkitError(f"{r.path}: corrupt file: {r.what} has shape {dims}")
    return tuple(int(d) for d in dims)
