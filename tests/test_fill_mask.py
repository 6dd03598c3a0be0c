"""`bertkit fill-mask` and `bertkit.fill_mask`: the masked-LM head's top tokens, as transformers' fill-mask pipeline gives them."""

import json

import pytest
import torch
from conftest import assert_cli_error, run_cli

import bertkit
from bertkit.config import BertConfig
from bertkit.model import BertForPreTraining, BertModel
from bertkit.tokenizer import BertTokenizer

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "ran", "big", "small", "red", "blue"]
TEXTS = ["the cat sat on the [MASK] .", "a [MASK] dog ran", "[MASK] [MASK] sat"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlm")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    model = BertForPreTraining(cfg)
    with torch.no_grad():
        model.mlm_bias.normal_(0, 1)  # a head that prefers some tokens, so the ranking means something
    bertkit.save(model, root / "pretrained", BertTokenizer({t: i for i, t in enumerate(vocab)}))
    bertkit.save(BertModel(cfg), root / "encoder", BertTokenizer({t: i for i, t in enumerate(vocab)}))
    return root


def test_matches_transformers_fill_mask_pipeline(checkpoint):
    transformers = pytest.importorskip("transformers")
    ours = bertkit.fill_mask(bertkit.load(checkpoint / "pretrained"), TEXTS, top_k=4)
    pipe = transformers.pipeline("fill-mask", model=str(checkpoint / "pretrained"), top_k=4, device="cpu")
    for text, masks in zip(TEXTS, ours):
        theirs = pipe(text)
        theirs = [theirs] if isinstance(theirs[0], dict) else theirs  # one mask: a flat list
        assert len(theirs) == len(masks) == text.count("[MASK]")
        for mine, other in zip(masks, theirs):
            assert [t for t, _ in mine] == [o["token_str"].replace(" ", "") for o in other]
            assert all(abs(s - o["score"]) < 1e-5 for (_, s), o in zip(mine, other))


def test_cli_texts_file_and_stdin(checkpoint, tmp_path):
    args = ["fill-mask", "--model", checkpoint / "pretrained", "--top-k", "3"]
    direct = run_cli(*args, *TEXTS)
    assert direct.returncode == 0, direct.stderr
    rows = [json.loads(line) for line in direct.stdout.splitlines()]
    assert [r["text"] for r in rows] == TEXTS and [len(r["masks"]) for r in rows] == [1, 1, 2]
    assert all(len(m) == 3 and m[0]["score"] >= m[1]["score"] >= m[2]["score"] for r in rows for m in r["masks"])
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    assert run_cli(*args, "--file", tmp_path / "texts.txt").stdout == direct.stdout
    assert run_cli(*args, input="\n".join(TEXTS) + "\n").stdout == direct.stdout


def test_cli_errors(checkpoint):
    assert_cli_error(run_cli("fill-mask", "--model", checkpoint / "pretrained", "no mask here"), "input 1: no [MASK] token")
    assert_cli_error(run_cli("fill-mask", "--model", checkpoint / "encoder", "a [MASK]"), "has no masked-LM head")
    assert_cli_error(run_cli("fill-mask", "--model", checkpoint / "pretrained", "--precision", "fp16", "a [MASK]"),
                     "--precision fp16 needs a CUDA GPU")
