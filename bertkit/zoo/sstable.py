"""Read a LevelDB-format sorted table (SSTable), the format of a TensorFlow checkpoint's `.index` file.

The layout (LevelDB's doc/table_format.md; TensorFlow's copy is tensorflow/tsl/lib/io/table*):

    data blocks ... | meta-index block | index block | footer (48 bytes)

- footer: two block handles (meta-index, index), each a pair of varint64 (offset, size), zero-padded
  to 40 bytes, then the 8-byte magic 0xdb4775248b80fb57 (little-endian).
- a block: its entries, then uint32 restart offsets and a uint32 restart count; on disk it is
  followed by a 5-byte trailer (compression type byte, masked CRC-32C) not counted in its handle.
- an entry: varint32 shared-prefix length, varint32 unshared length, varint32 value length, the
  unshared key bytes, the value. Keys are prefix-compressed against the previous key.
- the index block maps a key >= every key of a data block to that block's handle.

TensorFlow writes bundle indexes uncompressed; a compressed block is reported, not guessed at.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

from ..errors import BertkitError

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5


def varint(data: bytes, pos: int, what: str = "varint") -> tuple[int, int]:
    """(value, next position) of the base-128 varint at `pos` (protobuf and LevelDB share the encoding)."""
    result, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError(f"bad {what}")
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return result, pos
        shift += 7


class SSTable:
    """The (key, value) pairs of one table file, in key order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.data = self.path.read_bytes()
        except OSError as e:
            raise BertkitError(f"{self.path}: cannot read: {e.strerror}") from None
        if len(self.data) < FOOTER_SIZE or struct.unpack("<Q", self.data[-8:])[0] != MAGIC:
            raise BertkitError(
                f"{self.path}: not a TensorFlow checkpoint index, or a truncated one (no SSTable footer magic at its end)"
            )
        footer = self.data[-FOOTER_SIZE:]
        try:
            _, pos = self._handle(footer, 0)  # the meta-index block: TensorFlow leaves it empty
            self.index_handle, _ = self._handle(footer, pos)
        except ValueError:
            raise BertkitError(f"{self.path}: corrupt TensorFlow checkpoint index (bad footer)") from None

    def _handle(self, data: bytes, pos: int) -> tuple[tuple[int, int], int]:
        offset, pos = varint(data, pos, "block handle")
        size, pos = varint(data, pos, "block handle")
        return (offset, size), pos

    def _block(self, handle: tuple[int, int], what: str) -> bytes:
        offset, size = handle
        end = offset + size + TRAILER_SIZE
        if end > len(self.data) - FOOTER_SIZE:
            raise BertkitError(f"{self.path}: corrupt or truncated TensorFlow checkpoint index ({what} runs past the end)")
        kind = self.data[offset + size]
        if kind != 0:
            raise BertkitError(
                f"{self.path}: {what} is compressed (type {kind}); bertkit reads uncompressed indexes, as TensorFlow writes them"
            )
        return self.data[offset : offset + size]

    def _entries(self, block: bytes, what: str) -> Iterator[tuple[bytes, bytes]]:
        try:
            if len(block) < 4:
                raise ValueError
            (restarts,) = struct.unpack("<I", block[-4:])
            end = len(block) - 4 - 4 * restarts
            if end < 0:
                raise ValueError
            pos, key = 0, b""
            while pos < end:
                shared, pos = varint(block, pos)
                unshared, pos = varint(block, pos)
                length, pos = varint(block, pos)
                if shared > len(key) or pos + unshared + length > end:
                    raise ValueError
                key = key[:shared] + block[pos : pos + unshared]
                pos += unshared
                yield key, block[pos : pos + length]
                pos += length
        except (ValueError, struct.error):
            raise BertkitError(f"{self.path}: corrupt TensorFlow checkpoint index ({what} is malformed)") from None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        index = self._block(self.index_handle, "the index block")
        for n, (_, value) in enumerate(self._entries(index, "the index block")):
            try:
                handle, _ = self._handle(value, 0)
            except ValueError:
                raise BertkitError(f"{self.path}: corrupt TensorFlow checkpoint index (bad handle of data block {n})") from None
            yield from self._entries(self._block(handle, f"data block {n}"), f"data block {n}")
