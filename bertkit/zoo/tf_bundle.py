"""Read a TensorFlow checkpoint (a tensor bundle: `PREFIX.index` + `PREFIX.data-SSSSS-of-NNNNN`) without TensorFlow.

`PREFIX.index` is an SSTable (sstable.py) whose keys are tensor names and whose values are protobuf
messages (tensorflow/core/protobuf/tensor_bundle.proto):

    key ""      -> BundleHeaderProto { int32 num_shards = 1; Endianness endianness = 2; VersionDef version = 3; }
    key NAME    -> BundleEntryProto  { DataType dtype = 1; TensorShapeProto shape = 2; int32 shard_id = 3;
                                       int64 offset = 4; int64 size = 5; fixed32 crc32c = 6;
                                       repeated TensorSliceProto slices = 7; }
    TensorShapeProto { repeated Dim dim = 2; bool unknown_rank = 3; }   Dim { int64 size = 1; string name = 2; }

A tensor's raw values (C order, the header's byte order) are bytes [offset, offset + size) of data
file `shard_id`. String tensors (the object graph TF2's `tf.train.Checkpoint` adds) are skipped:
BERT's variables are all numeric. Partitioned variables (slices) are not supported.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BertkitError
from .sstable import SSTable, varint

# tensorflow/core/framework/types.proto DataType -> numpy dtype (byte order added from the header)
DTYPES = {1: "f4", 2: "f8", 3: "i4", 4: "u1", 5: "i2", 6: "i1", 9: "i8", 10: "?", 14: "bfloat16", 17: "u2",
          19: "f2", 22: "u4", 23: "u8"}
DT_STRING = 7


def _fields(message: bytes):
    """(field number, wire type, value) for each field of a protobuf message (value: int or bytes)."""
    pos = 0
    while pos < len(message):
        tag, pos = varint(message, pos, "protobuf tag")
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = varint(message, pos, "protobuf varint")
        elif wire == 1:
            value, pos = int.from_bytes(message[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = varint(message, pos, "protobuf length")
            value, pos = message[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(message[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(message):
            raise ValueError("protobuf message runs past its end")
        yield number, wire, value


def _entry(value: bytes) -> dict:
    entry = {"dtype": 0, "shape": [], "shard": 0, "offset": 0, "size": 0, "sliced": False, "unknown_rank": False}
    for number, _, v in _fields(value):
        if number == 1:
            entry["dtype"] = v
        elif number == 2:
            for n, _, dim in _fields(v):
                if n == 2:
                    size = next((s for k, _, s in _fields(dim) if k == 1), 0)
                    entry["shape"].append(size - (1 << 64) if size >= 1 << 63 else size)  # int64 two's complement
                elif n == 3:
                    entry["unknown_rank"] = bool(dim)
        elif number == 3:
            entry["shard"] = v
        elif number == 4:
            entry["offset"] = v
        elif number == 5:
            entry["size"] = v
        elif number == 7:
            entry["sliced"] = True
    return entry


def checkpoint_prefix(source: str | Path) -> Path | None:
    """The bundle prefix named by `source`: the prefix itself, its `.index` file, or a directory holding
    one checkpoint (Google's unzipped `bert_model.ckpt.*`, or a `checkpoint` file naming the latest); None
    if `source` is none of these."""
    source = Path(source)
    if source.name.endswith(".index") and source.is_file():
        return source.with_name(source.name[: -len(".index")])
    if Path(str(source) + ".index").is_file():
        return source
    if source.is_dir():
        state = source / "checkpoint"
        if state.is_file():
            for line in state.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("model_checkpoint_path:"):
                    name = line.split(":", 1)[1].strip().strip('"')
                    prefix = source / Path(name).name  # the file may hold an absolute path from another machine
                    if Path(str(prefix) + ".index").is_file():
                        return prefix
        indexes = sorted(source.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_name(indexes[0].name[: -len(".index")])
    return None


def read_bundle(prefix: str | Path) -> dict[str, np.ndarray]:
    """name -> array for every numeric tensor of the checkpoint at `prefix` (TF variable names,
    e.g. `bert/encoder/layer_0/attention/self/query/kernel`)."""
    prefix = Path(prefix)
    index_path = Path(str(prefix) + ".index")
    table = SSTable(index_path)
    num_shards, byte_order = 1, "<"
    entries = {}
    for key, value in table.items():
        try:
            if key == b"":
                for number, _, v in _fields(value):
                    if number == 1:
                        num_shards = v
                    elif number == 2:
                        byte_order = ">" if v == 1 else "<"
                continue
            entries[key.decode("utf-8")] = _entry(value)
        except (ValueError, UnicodeDecodeError) as e:
            raise BertkitError(f"{index_path}: corrupt entry {key[:80]!r} ({e})") from None
    if not entries:
        raise BertkitError(f"{index_path}: the checkpoint holds no tensors")

    out, files = {}, {}
    try:
        for name, e in entries.items():
            if e["dtype"] == DT_STRING:
                continue
            if e["dtype"] not in DTYPES:
                raise BertkitError(f"{index_path}: tensor {name} has an unsupported dtype (TensorFlow DataType {e['dtype']})")
            if e["sliced"]:
                raise BertkitError(f"{index_path}: tensor {name} is a partitioned variable; bertkit reads whole tensors only")
            if e["unknown_rank"] or any(d < 0 for d in e["shape"]):
                raise BertkitError(f"{index_path}: tensor {name} has no fixed shape")
            data_path = Path(f"{prefix}.data-{e['shard']:05d}-of-{num_shards:05d}")
            if data_path not in files:
                if not data_path.is_file():
                    raise BertkitError(f"{data_path}: missing (the index {index_path.name} puts tensor {name} in it)")
                files[data_path] = (open(data_path, "rb"), os.path.getsize(data_path))
            f, file_size = files[data_path]
            if e["offset"] + e["size"] > file_size:
                raise BertkitError(
                    f"{data_path}: truncated: tensor {name} needs bytes {e['offset']}..{e['offset'] + e['size']}, "
                    f"the file has {file_size}"
                )
            f.seek(e["offset"])
            raw = f.read(e["size"])
            out[name] = _decode(raw, e, byte_order, name, data_path)
    finally:
        for f, _ in files.values():
            f.close()
    return out


def _decode(raw: bytes, e: dict, byte_order: str, name: str, path: Path) -> np.ndarray:
    shape = tuple(e["shape"])
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    code = DTYPES[e["dtype"]]
    if code == "bfloat16":  # no numpy dtype: the top 16 bits of a float32
        bits = np.frombuffer(raw, dtype=byte_order + "u2")
        values = (bits.astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(raw, dtype=np.dtype(byte_order + code) if code != "?" else np.bool_)
    if values.size != count:
        raise BertkitError(f"{path}: tensor {name} holds {values.size} values, its shape {shape} needs {count}")
    return values.reshape(shape).astype(values.dtype.newbyteorder("="), copy=True)
