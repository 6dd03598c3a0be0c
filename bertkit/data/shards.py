"""Pretraining shards: `.npz` files with GluonNLP's arrays, plus `stats.json`.

Each shard holds N instances of width T = max_seq_length:

    input_ids            (N, T) int32, padded with 0
    segment_ids          (N, T) int32, 0 for [CLS] A [SEP] and padding, 1 for B [SEP]
    valid_lengths        (N,)   int32
    masked_lm_positions  (N, P) int32, P = max_predictions_per_seq, ascending, 0 where unused
    masked_lm_ids        (N, P) int32, the original ids at those positions
    masked_lm_weights    (N, P) float32, 1 for a real prediction, 0 for padding
    next_sentence_labels (N,)   int32, 0 = B really follows A, 1 = B is random; -1 = no pair (--no-nsp
                                shards: `[CLS] A [SEP]` instances for the masked LM alone)

Shards written with dynamic masking lack the three `masked_lm_*` arrays (and `input_ids` are not
masked); the loader masks each batch afresh.

The zip entries carry a fixed timestamp, so the same data gives byte-identical files (checksums
compare across runs and across `--workers`). A shard is written under a temporary name and renamed,
so a crash never leaves a truncated shard behind.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import BertkitError
from ..textio import read_json

SHARD_PATTERN = "shard-*.npz"
STATS_FILE = "stats.json"
FORMAT_NAME = "bertkit-pretraining-shards"
FORMAT_VERSION = 1

INSTANCE_ARRAYS = ("input_ids", "segment_ids", "valid_lengths", "next_sentence_labels")
NO_NSP_LABEL = -1
MASK_ARRAYS = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.npz"


def write_shard(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed `.npz` (what `np.load` reads), atomically, reproducibly."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, path)


def read_shard(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of one shard, loaded into memory."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BertkitError(f"{path}: not a readable .npz shard ({e})") from None
    missing = [name for name in INSTANCE_ARRAYS if name not in arrays]
    if missing:
        raise BertkitError(f"{path}: shard lacks the array(s) {', '.join(missing)}")
    return arrays


def list_shards(directory: str | Path) -> list[Path]:
    """The shards of a directory in name order (any `*.npz`, bertkit's own names sort first), or the
    files a glob pattern names (GluonNLP's `--data 'out/*.npz'`), in name order."""
    text = str(directory)
    directory = Path(directory).expanduser()
    if not directory.is_dir() and any(c in text for c in "*?["):
        import glob

        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)) if p.endswith(".npz"))
        if not found:
            raise BertkitError(f"{text}: no .npz shards match this pattern")
        return found
    if not directory.is_dir():
        raise BertkitError(f"{directory}: pretraining data directory not found")
    return sorted(directory.glob("*.npz"))


def holds_pairs(stats: dict | None) -> bool:
    """Whether shards hold next-sentence pairs, as their stats.json says (`settings.nsp`); False for
    --no-nsp shards. Shards without the setting (written before --no-nsp, or elsewhere) hold pairs."""
    return bool(((stats or {}).get("settings") or {}).get("nsp", True))


def check_one_kind(data: str | Path, shards: list[Path]) -> None:
    """Shards gathered by a glob from several directories must be of one kind, as each directory's
    stats.json says: next-sentence pairs, or --no-nsp single segments (labels -1, which NSP cannot score)."""
    kinds: dict[bool, Path] = {}
    for folder in sorted({p.parent for p in shards}):
        kinds.setdefault(holds_pairs(read_stats(folder)), folder)
    if len(kinds) > 1:
        raise BertkitError(f"{data}: the pattern takes --no-nsp shards (in {kinds[False]}) and next-sentence pair "
                           f"shards (in {kinds[True]}); pretrain on one kind")


def shard_directory(data: str | Path) -> Path:
    """Where a shard directory's stats.json and vocab.txt are: the directory itself, or for a glob
    pattern the folder of its first shard."""
    path = Path(data).expanduser()
    return path if path.is_dir() else list_shards(data)[0].parent


def write_stats(directory: str | Path, stats: dict) -> None:
    path = Path(directory) / STATS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_stats(directory: str | Path) -> dict | None:
    """`stats.json` of a shard directory, or None when there is none (shards from elsewhere)."""
    path = Path(directory) / STATS_FILE
    return read_json(path) if path.is_file() else None
