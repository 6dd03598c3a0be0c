"""Fetch a BERT from the Hugging Face Hub into the standard Hugging Face cache, through `huggingface_hub`.

Only what bertkit reads is fetched: `config.json`; the weights (`model.safetensors`, or its sharded
index and shards, else `pytorch_model.bin`: one of them, never both); `vocab.txt` (else
`tokenizer.json`), `tokenizer_config.json` for the casing, and `bertkit.json` (head and labels) when
bertkit wrote the checkpoint. Never code. Files land in the cache
that transformers uses too ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), with
huggingface_hub's progress bars; each file is written to a temporary name and renamed when complete,
so an interrupted download leaves no half-written file behind (the next attempt fetches it again).

Downloads are off when HF_HUB_OFFLINE is set (`--offline` sets it); then, as when the Hub cannot be
reached, a missing model is a one-line error saying what to fetch and where it would go.
HF_ENDPOINT (read on each call) points at another Hub, e.g. a mirror or the tests' local server.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BertkitError

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEX = "model.safetensors.index.json"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def repo_folder(repo: str) -> Path:
    return hf_cache_dir() / ("models--" + repo.replace("/", "--"))


def is_complete(snapshot: Path) -> bool:
    """Whether a cached snapshot holds a config and its weights (a download may have stopped halfway)."""
    if not (snapshot / "config.json").is_file():
        return False
    if any((snapshot / w).is_file() for w in WEIGHTS):
        return True
    index = snapshot / SHARD_INDEX
    if index.is_file():
        import json

        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, AttributeError):
            return False
        return all((snapshot / s).is_file() for s in shards)
    return False


def local_snapshot(repo: str, revision: str = "main") -> Path | None:
    """The cached snapshot of `repo` at `revision` (a branch name recorded under refs/, or a commit),
    if it is complete."""
    folder = repo_folder(repo)
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = folder / "snapshots" / commit
    return snapshot if snapshot.is_dir() and is_complete(snapshot) else None


def cached_snapshot(repo: str) -> Path | None:
    """The snapshot `bertkit.load` reads for a model id in the cache: refs/main's, else the newest one
    holding a config.json (a cache copied from elsewhere may lack refs/); complete or not."""
    snapshots = repo_folder(repo) / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_folder(repo) / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    candidates = sorted((p for p in snapshots.iterdir() if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def files_to_fetch(repo: str, files: list[str]) -> list[str]:
    names = set(files)
    if "config.json" not in names:
        raise BertkitError(f"Hub repository {repo} has no config.json: not a transformers checkpoint bertkit can read")
    if "model.safetensors" in names:
        weights = ["model.safetensors"]
    elif SHARD_INDEX in names:
        weights = [SHARD_INDEX] + sorted(f for f in names if f.startswith("model-") and f.endswith(".safetensors"))
    elif "pytorch_model.bin" in names:
        weights = ["pytorch_model.bin"]
    else:
        other = sorted(f for f in names if f.endswith((".h5", ".msgpack", ".ckpt.index", ".onnx")))
        raise BertkitError(
            f"Hub repository {repo} has no PyTorch weights (model.safetensors or pytorch_model.bin)"
            + (f"; it has {', '.join(other)}" if other else "")
        )
    vocab = ["vocab.txt"] if "vocab.txt" in names else ["tokenizer.json"] if "tokenizer.json" in names else []
    # The casing, and bertkit's own notes (head, labels) when bertkit wrote the checkpoint.
    extra = [f for f in ("tokenizer_config.json", "bertkit.json") if f in names]
    return ["config.json", *weights, *vocab, *extra]


def not_here(repo: str, label: str, why: str) -> BertkitError:
    where = repo_folder(repo)
    what = label if label == repo else f"{label} (Hub repository {repo})"
    return BertkitError(
        f"{what} is not on this machine and {why}; fetch it on a machine with network with "
        f"`bertkit zoo --fetch {label}`, which puts it in {where}"
    )


def download(repo: str, revision: str = "main", label: str | None = None) -> Path:
    """The local snapshot folder of `repo` at `revision`, downloading the files bertkit needs if they are missing."""
    label = label or repo
    snapshot = local_snapshot(repo, revision)
    if snapshot is not None:
        return snapshot
    if offline():
        raise not_here(repo, label, "downloads are off (HF_HUB_OFFLINE is set, or --offline)")
    import huggingface_hub
    from huggingface_hub import HfApi, hf_hub_download

    failures = (OSError, getattr(huggingface_hub.errors, "HTTPError", OSError))
    endpoint = os.environ.get("HF_ENDPOINT") or None
    cache = hf_cache_dir()
    # huggingface_hub logs each retry of a broken transfer; the one-line error below says what happened.
    huggingface_hub.utils.logging.set_verbosity_error()
    try:
        info = HfApi(endpoint=endpoint).model_info(repo, revision=revision)
        files = files_to_fetch(repo, [s.rfilename for s in info.siblings or []])
        paths = [
            Path(hf_hub_download(repo, f, revision=revision, cache_dir=cache, endpoint=endpoint)) for f in files
        ]
    except failures as e:
        kind = type(e).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError"):
            raise BertkitError(f"{label}: Hub repository {repo} not found (or it is private or gated)") from None
        if kind == "RevisionNotFoundError":
            raise BertkitError(f"{label}: Hub repository {repo} has no revision {revision!r}") from None
        detail = str(e).strip().splitlines()[0] if str(e).strip() else kind
        raise not_here(repo, label, f"the download failed ({kind}: {detail})") from None
    snapshot = paths[0].parent
    if any(p.parent != snapshot for p in paths):  # the repository changed while we were downloading
        raise BertkitError(f"{label}: Hub repository {repo} changed during the download; run the command again")
    return snapshot
