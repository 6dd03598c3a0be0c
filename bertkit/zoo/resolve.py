"""Turn the names the zoo knows into checkpoint directories, for `checkpoint.resolve` (`bertkit.load`).

- a GluonNLP `.params` file or a Google TensorFlow checkpoint (prefix, `.index` file, or its folder):
  converted once into bertkit's cache (convert.py);
- a zoo name (`bert_12_768_12/book_corpus_wiki_en_uncased`, `bert_4_256_4/uncased`, `bert-base-uncased`):
  the Hugging Face cache's copy if complete; else GluonNLP's own download of it in $MXNET_HOME/models
  (default ~/.mxnet/models), converted; else downloaded from the Hub (hub.py); else a one-line error
  saying what to fetch and where;
- a Hub id (`owner/name`) that is not in the cache: downloaded (`from_hub`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import BertkitError
from .convert import converted_for_loading, detect
from .hub import download, is_complete, local_snapshot
from .names import ZooEntry, lookup
from .source import Options

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")

__all__ = ["resolve_source", "from_hub", "is_complete", "entry_status", "gluonnlp_files"]


def resolve_source(name_or_path: str | Path, dataset: str | None = None) -> Path | None:
    """A checkpoint directory for a convertible file or a zoo name; None for anything else."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if dataset is None and (path.exists() or Path(name + ".index").is_file()):
        return converted_for_loading(path) if detect(path) else None
    entry = lookup(name, dataset)
    if entry is not None:
        return resolve_entry(entry)
    if dataset is not None:
        raise BertkitError(f"dataset={dataset!r} goes with a zoo model name (see `bertkit zoo`); {name!r} is not one")
    return None


def from_hub(name: str) -> Path | None:
    """The downloaded snapshot for a Hub id not in the cache; None if `name` cannot be a Hub id."""
    if not HUB_ID.match(name) or "--" in name or name.endswith("."):
        return None
    return download(name)


def mxnet_home() -> Path:
    return Path(os.environ.get("MXNET_HOME") or Path.home() / ".mxnet").expanduser()


def gluonnlp_files(entry: ZooEntry) -> tuple[Path, Path] | None:
    """GluonNLP's own download of `entry` (params, vocab) in $MXNET_HOME/models, if both files are there."""
    if entry.gluonnlp_params_sha1 is None:
        return None
    folder = mxnet_home() / "models"
    params = folder / f"{entry.model}_{entry.dataset}-{entry.gluonnlp_params_sha1}.params"
    vocab = folder / f"{entry.dataset}-{entry.gluonnlp_vocab_sha1}.vocab"
    return (params, vocab) if params.is_file() and vocab.is_file() else None


def resolve_entry(entry: ZooEntry) -> Path:
    if entry.repo and (snapshot := local_snapshot(entry.repo)) is not None:
        return snapshot
    if files := gluonnlp_files(entry):
        return converted_for_loading(files[0], Options(vocab=files[1], shape=entry.model, cased=entry.cased))
    if entry.repo:
        return download(entry.repo, label=entry.name)
    if entry.dataset.startswith("kobert"):
        raise BertkitError(f"{entry.name}: {entry.note}")
    folder = mxnet_home() / "models"
    raise BertkitError(
        f"{entry.name} has no Hugging Face Hub copy ({entry.note}); put GluonNLP's files "
        f"{entry.model}_{entry.dataset}-{entry.gluonnlp_params_sha1}.params and "
        f"{entry.dataset}-{entry.gluonnlp_vocab_sha1}.vocab in {folder} (where gluonnlp.model.get_model downloads them) "
        f"and bertkit converts them"
    )


def entry_status(entry: ZooEntry) -> str:
    """Where `entry` is on this machine: "hf-cache", "gluonnlp" ($MXNET_HOME), or "" (not here)."""
    if entry.repo and local_snapshot(entry.repo) is not None:
        return "hf-cache"
    if gluonnlp_files(entry):
        return "gluonnlp"
    return ""


def fetch(entry: ZooEntry) -> Path:
    """Download `entry` now (for `bertkit zoo --fetch`)."""
    if not entry.repo:
        raise BertkitError(f"{entry.name} has no Hugging Face Hub copy ({entry.note})")
    return download(entry.repo, label=entry.name)
