"""GluonNLP `.params` files and Google TensorFlow checkpoints -> bertkit checkpoint directories.

`convert(source, out)` writes the directory (transformers loads it too); `converted_for_loading(source)`
is what `bertkit.load(source)` uses: the same conversion, done once into a cache folder
($BERTKIT_CACHE, default ~/.cache/bertkit, under converted/) keyed by the source files' paths, sizes
and modification times, so a second load reads the converted files straight away.

The format modules (convert_gluonnlp.py, convert_tf.py) turn a source into a `Converted` (source.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import BertkitError
from .convert_gluonnlp import read_gluonnlp
from .convert_tf import read_tensorflow
from .mxnet_params import is_mxnet_params
from .source import Converted, Options
from .tf_bundle import checkpoint_prefix


def detect(source: str | Path) -> str | None:
    """"gluonnlp", "tensorflow", or None (not a source this module converts)."""
    source = Path(source)
    if source.is_file() and (source.suffix == ".params" or is_mxnet_params(source)):
        return "gluonnlp"
    if source.is_dir() and (source / "config.json").is_file():
        return None  # a checkpoint directory already (it may keep its TF files beside)
    if checkpoint_prefix(source) is not None:
        return "tensorflow"
    return None


def read_source(source: str | Path, options: Options | None = None) -> Converted:
    options = options or Options()
    kind = detect(source)
    if kind == "gluonnlp":
        return read_gluonnlp(Path(source), options)
    if kind == "tensorflow":
        return read_tensorflow(Path(source), options)
    if not Path(source).exists() and not Path(str(source) + ".index").exists():
        raise BertkitError(f"{source}: no such file or TensorFlow checkpoint prefix")
    raise BertkitError(
        f"{source}: not a GluonNLP .params file (MXNet NDArray list) nor a TensorFlow checkpoint "
        "(PREFIX.index + PREFIX.data-*, or a folder holding one)"
    )


def convert(source: str | Path, out: str | Path, options: Options | None = None, overwrite: bool = False) -> Path:
    """Convert `source` into the checkpoint directory `out`; returns `out`."""
    out = Path(out)
    check_out(out, overwrite)
    write_converted(read_source(source, options), out)
    return out


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise BertkitError(f"{out}: exists and is not empty (pass --overwrite to replace it)")


def write_converted(c: Converted, out: Path) -> None:
    _write(to_model(c), c, out)


def to_model(c: Converted):
    """The bertkit model holding `c`'s tensors; every tensor of the model must come from the source."""
    import torch

    from ..checkpoint import HEADS, hf_name_map, load_hf_state_dict

    cls = HEADS[c.head][0]
    model = cls(c.config, num_labels=len(c.labels)) if c.head == "classification" else cls(c.config)
    prefix = "bert." if hasattr(model, "bert") else ""
    tensors = {(prefix + k if k.split(".")[0] in ("embeddings", "encoder", "pooler") else k): v for k, v in c.tensors.items()}
    origin = {(prefix + k if k.split(".")[0] in ("embeddings", "encoder", "pooler") else k): v for k, v in c.origin.items()}
    sd = model.state_dict()
    expected = {}
    for hf, name, part in hf_name_map(model):
        shape = tuple(sd[name].shape)
        expected[hf] = (shape[0] // 3, *shape[1:]) if part is not None else shape
    for hf, array in tensors.items():
        if hf not in expected:
            raise BertkitError(f"{c.source}: tensor {origin[hf]} has no place in a {c.head} model")
        if tuple(array.shape) != expected[hf]:
            raise BertkitError(
                f"{c.source}: tensor {origin[hf]} has shape {tuple(array.shape)}, {c.config_from} needs {expected[hf]}"
            )
    missing = [hf for hf in expected if hf not in tensors]
    if missing:
        names = [c.expected_name(hf.removeprefix("bert.")) for hf in missing]
        raise BertkitError(f"{c.source}: {len(names)} tensor(s) missing for a {c.head} model: {', '.join(names)}")
    load_hf_state_dict(model, {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()},
                       source=str(c.source))
    model.eval()
    return model


def _input_files(source: Path, options: Options) -> list[Path]:
    """Every file a conversion of `source` may read: the weights, and what may sit beside them."""
    named = [options.vocab, options.hparams, options.config]
    if detect(source) == "gluonnlp":
        beside = [p for p in source.parent.iterdir() if p.suffix in (".vocab", ".spiece") or p.name in ("vocab.json", "hparams.json")]
        files = [source, *beside]
    else:
        prefix = checkpoint_prefix(source)
        files = [Path(str(prefix) + ".index"), *prefix.parent.glob(prefix.name + ".data-*"),
                 prefix.parent / "bert_config.json", prefix.parent / "vocab.txt"] if prefix else [source]
    return sorted({Path(p) for p in [*files, *named] if p is not None and Path(p).is_file()})


def _write(model, c: Converted, out: Path) -> None:
    from ..checkpoint import save
    from ..tokenizer import BertTokenizer, require_special_tokens

    vocab = require_special_tokens({t: i for i, t in enumerate(c.vocab)}, c.vocab_file)
    tokenizer = BertTokenizer(vocab, lowercase=c.lowercase)
    info = dict(c.info)
    if c.labels is not None:
        info["labels"] = list(c.labels)
    save(model, out, tokenizer=tokenizer, info=info)


# ---- conversion on load -----------------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("BERTKIT_CACHE") or Path.home() / ".cache" / "bertkit")


def converted_for_loading(source: str | Path, options: Options | None = None) -> Path:
    """A checkpoint directory converted from `source`, made once and kept in the cache. The cache key is
    the options and the paths, sizes and modification times of every file the conversion may read, so a
    cached conversion is found without reading the source again, and a changed file is converted anew."""
    options = options or Options()
    key = hashlib.sha256(repr(options).encode())
    for p in _input_files(Path(source), options):
        st = p.stat()
        key.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    weights = checkpoint_prefix(source) if detect(source) == "tensorflow" else Path(source)
    stem = weights.name.split(".")[0] or "checkpoint"
    out = cache_root() / "converted" / f"{stem}-{key.hexdigest()[:16]}"
    if (out / "model.safetensors").is_file():
        return out
    converted = read_source(source, options)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_converted(converted, tmp)
        os.replace(tmp, out)  # a directory appears whole or not at all
    except OSError:
        if not (out / "model.safetensors").is_file():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
