"""Training checkpoints: a model checkpoint directory plus everything needed to resume exactly.

`OUT/checkpoint-STEP/` is an ordinary checkpoint directory (it loads in bertkit and in
`transformers`) with one more file, `training_state.pt`: optimizer and scheduler state, the RNG
states and the data position. It is written under a temporary name and renamed into place, so a
crash mid-write never leaves a half checkpoint under a real name, and the last `keep` are kept.
Resuming takes the newest checkpoint that reads back whole and says so when it had to fall back.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..checkpoint import save

STATE_FILE = "training_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def write_checkpoint(out_dir: Path, step: int, model, tokenizer, training_state: dict, info: dict, keep: int = 3) -> Path:
    """Write `out_dir/checkpoint-STEP` atomically and prune all but the newest `keep`."""
    final = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save(model, tmp, tokenizer, info={**info, "step": step})
    torch.save(training_state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_checkpoints(out_dir: Path) -> None:
    """Delete every resumable checkpoint under `out_dir` (a finished fine-tuning run keeps only its result)."""
    for path in list_checkpoints(Path(out_dir)):
        shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoint directories under `out_dir`, oldest step first."""
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


@dataclass
class Resumable:
    path: Path
    step: int
    state: dict
    skipped: list[tuple[Path, str]]  # newer checkpoints that could not be read, with the reason


def check_checkpoint(path: Path) -> dict:
    """Read a checkpoint's training state and verify its weights file; raise ValueError if broken."""
    for name in ("config.json", "model.safetensors", STATE_FILE):
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
    try:
        with safe_open(path / "model.safetensors", "pt") as f:
            for key in f.keys():
                f.get_slice(key)  # header offsets are checked against the file size here
    except Exception as e:  # noqa: BLE001 - any failure to read means the file is corrupt
        raise ValueError(f"model.safetensors is corrupt ({e})") from None
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{STATE_FILE} is corrupt ({type(e).__name__})") from None


def find_resumable(out_dir: Path) -> Resumable | None:
    """The newest checkpoint that reads back whole, or None if there is none."""
    skipped = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            state = check_checkpoint(path)
        except ValueError as e:
            skipped.append((path, str(e)))
            continue
        return Resumable(path, int(state["step"]), state, skipped)
    return None
