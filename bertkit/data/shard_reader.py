"""Rows of a shard's arrays read straight from the file, without loading the rest of the shard.

A shard is a zip of `.npy` members written STORED (uncompressed, see `shards.write_shard`), so each
array's data is one contiguous, C-ordered run of bytes in the file: after the member's zip local
header and its `.npy` header. `ShardFile` finds those offsets once (central directory, local
headers, `.npy` headers: a few hundred bytes) and then reads any set of rows with one `preadv` per
run of consecutive rows.

A member that cannot be read that way (compressed by `np.savez_compressed`, Fortran-ordered, an
unknown `.npy` header version) is read whole and indexed in memory instead; the result is the same.

Every read returns the number of bytes of array data it read (the whole array for such members), so
a loader can count what it took from disk.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BertkitError

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... file name length, extra field length
_LOCAL_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class Member:
    """One `.npy` member of a shard."""

    name: str  # the array name, without ".npy"
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int | None  # file offset of the array data, None where the array must be read whole

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return None


def _member(f, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    name = info.filename[: -len(".npy")]
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:  # stored, not encrypted
        f.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        if fields[0] != _LOCAL_SIGNATURE:
            raise BertkitError(f"bad zip local header for {info.filename}")
        start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
        f.seek(start)
        header = _npy_header(f)
        if header is not None:
            shape, fortran_order, dtype = header
            offset = f.tell()
            fits = offset + math.prod(shape) * dtype.itemsize <= start + info.file_size
            if fits and not dtype.hasobject and (not fortran_order or len(shape) < 2):
                return Member(name, dtype, tuple(shape), offset)
    with zf.open(info) as m:  # compressed or unusual: only the header now, the array when asked
        header = _npy_header(m)
    if header is None:
        with zf.open(info) as m:
            array = np.lib.format.read_array(m, allow_pickle=False)
        return Member(name, array.dtype, array.shape, None)
    shape, _, dtype = header
    return Member(name, dtype, tuple(shape), None)


def _pread_into(fd: int, out: np.ndarray, offset: int) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += got


class ShardFile:
    """The `.npy` members of one shard, and reads of whole arrays or of rows of them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f, zipfile.ZipFile(f) as zf:
                self.members = {
                    m.name: m for m in (_member(f, zf, i) for i in zf.infolist() if i.filename.endswith(".npy"))
                }
        except (OSError, ValueError, zipfile.BadZipFile, BertkitError) as e:
            raise BertkitError(f"{self.path}: not a readable .npz shard ({e})") from None
        pickled = [name for name, m in self.members.items() if m.dtype.hasobject]
        if pickled:  # GluonNLP's pretraining .npz files store ragged rows as pickled object arrays
            raise BertkitError(f"{self.path}: array {pickled[0]!r} holds pickled Python objects (a GluonNLP .npz?), "
                               "which bertkit never unpickles; write the shards from the text with `bertkit pretrain-data`")

    def __contains__(self, name: str) -> bool:
        return name in self.members

    def _whole(self, member: Member) -> np.ndarray:
        with zipfile.ZipFile(self.path) as zf, zf.open(member.name + ".npy") as m:
            return np.lib.format.read_array(m, allow_pickle=False)

    def read(self, name: str) -> tuple[np.ndarray, int]:
        """One whole array, and the bytes of array data read."""
        member = self.members[name]
        if member.offset is None:
            array = self._whole(member)
            return array, array.nbytes
        out = np.empty(member.shape, dtype=member.dtype)
        with open(self.path, "rb", buffering=0) as f:
            _pread_into(f.fileno(), out, member.offset)
        return out, out.nbytes

    def read_rows(self, names, rows: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
        """`{name: array[rows]}` for sorted, distinct `rows`, and the bytes of array data read.

        Each run of consecutive rows is one read per array."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows[0] < 0 or (np.diff(rows) <= 0).any()):
            raise ValueError("rows must be sorted, distinct and non-negative")
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        run_starts = np.concatenate([[0], cuts]).astype(np.int64)
        run_ends = np.concatenate([cuts, [len(rows)]]).astype(np.int64)
        out, nbytes = {}, 0
        with open(self.path, "rb", buffering=0) as f:
            fd = f.fileno()
            for name in names:
                member = self.members[name]
                if len(rows) and rows[-1] >= member.shape[0]:
                    raise BertkitError(f"{self.path}: row {rows[-1]} out of range for {name} {member.shape}")
                if member.offset is None:
                    array = self._whole(member)
                    out[name], nbytes = array[rows], nbytes + array.nbytes
                    continue
                a = np.empty((len(rows), *member.row_shape), dtype=member.dtype)
                size = member.row_bytes
                if len(rows):
                    for i, j in zip(run_starts.tolist(), run_ends.tolist()):
                        _pread_into(fd, a[i:j], member.offset + int(rows[i]) * size)
                out[name], nbytes = a, nbytes + len(rows) * size
        return out, nbytes
