"""Turn the names the zoo knows into checkpoint directories, for `pretrained.resolve` (`bertkit.load`).

- a GluonNLP `.params` file or a Google TensorFlow checkpoint (prefix, `.index` file, or its folder):
  converted once into bertkit's cache (convert.py);
- a zoo name (`bert_12_768_12/book_corpus_wiki_en_uncased`, `bert_4_256_4/uncased`, `bert-base-uncased`):
  the Hugging Face cache's copy if complete; else GluonNLP's own download of it in $MXNET_HOME/models
  (default ~/.mxnet/models), converted; else downloaded from the Hub (hub.py); else a one-line error
  saying what to fetch and where;
- a Hub id (`owner/name`) that is not in the cache: downloaded (`from_hub`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import BertkitError
from ..textio import read_json
from ..tokenizer import saved_casing
from .convert import cache_root, converted_for_loading, detect
from .hub import download, local_snapshot
from .names import ZooEntry, lookup
from .source import Options

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")

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
        return with_casing(snapshot, entry)
    if files := gluonnlp_files(entry):
        return converted_for_loading(files[0], Options(vocab=files[1], shape=entry.model, cased=entry.cased))
    if entry.repo:
        return with_casing(download(entry.repo, label=entry.name), entry)
    if entry.dataset.startswith("kobert"):
        raise BertkitError(f"{entry.name}: {entry.note}")
    folder = mxnet_home() / "models"
    raise BertkitError(
        f"{entry.name} has no Hugging Face Hub copy ({entry.note}); put GluonNLP's files "
        f"{entry.model}_{entry.dataset}-{entry.gluonnlp_params_sha1}.params and "
        f"{entry.dataset}-{entry.gluonnlp_vocab_sha1}.vocab in {folder} (where gluonnlp.model.get_model downloads them) "
        f"and bertkit converts them"
    )


def with_casing(snapshot: Path, entry: ZooEntry) -> Path:
    """`snapshot` itself if it says how to case its input, or if it is uncased (what a tokenizer assumes
    when nothing is said). A cased model whose repository has no `do_lower_case` (BioBERT's has no
    tokenizer_config.json) gets a folder in bertkit's cache linking to the snapshot's files, with a
    tokenizer_config.json that says cased: the Hugging Face cache itself is left as downloaded."""
    if saved_casing(snapshot)[0] is not None or not entry.cased:
        return snapshot
    overlay = cache_root() / "zoo" / f"{entry.repo.replace('/', '--')}-{snapshot.name[:12]}"
    config = overlay / "tokenizer_config.json"
    if not config.is_file():
        overlay.mkdir(parents=True, exist_ok=True)
        for f in snapshot.iterdir():
            if f.name != config.name and not (overlay / f.name).exists():
                (overlay / f.name).symlink_to(f.resolve())
        extra = read_json(snapshot / config.name) if (snapshot / config.name).is_file() else {}
        tmp = config.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({**extra, "do_lower_case": False}, indent=2) + "\n")
        os.replace(tmp, config)  # written last: its presence means the folder is whole
    return overlay


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
