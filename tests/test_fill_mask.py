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


def assert_matches_pipeline(directory, texts, top_k=5):
    """bertkit.fill_mask on the checkpoint in `directory` gives transformers' fill-mask pipeline's top-k
    tokens, in its order, and its probabilities within 1e-5, for every [MASK] of every text."""
    transformers = pytest.importorskip("transformers")
    ours = bertkit.fill_mask(bertkit.load(directory), texts, top_k=top_k)
    pipe = transformers.pipeline("fill-mask", model=str(directory), top_k=top_k, device="cpu")
    for text, masks in zip(texts, ours):
        theirs = pipe(text)
        theirs = [theirs] if isinstance(theirs[0], dict) else theirs  # one mask: a flat list
        assert len(theirs) == len(masks) == text.count("[MASK]")
        for mine, other in zip(masks, theirs):
            assert len(mine) == top_k
            assert [t for t, _ in mine] == [o["token_str"].replace(" ", "") for o in other], text
            assert all(abs(s - o["score"]) < 1e-5 for (_, s), o in zip(mine, other)), text


def test_matches_transformers_fill_mask_pipeline(checkpoint):
    assert_matches_pipeline(checkpoint / "pretrained", TEXTS)


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A checkpoint as `bertkit pretrain` writes it: 30 steps of bert_2_128_2 on a small corpus of WORDS."""
    root = tmp_path_factory.mktemp("pretrain-run")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS) + "\n")
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(40):  # documents of four sentences, in Google's layout
        for _ in range(4):
            lines.append(" ".join(WORDS[i] for i in torch.randint(len(WORDS), (6,), generator=g).tolist()) + " .")
        lines.append("")
    (root / "corpus.txt").write_text("\n".join(lines))
    made = run_cli("pretrain-data", "--input", root / "corpus.txt", "--vocab", vocab, "--out", root / "shards",
                   "--max-seq-length", "32", "--max-predictions-per-seq", "5", "--no-progress")
    assert made.returncode == 0, made.stderr
    trained = run_cli("pretrain", "--data", root / "shards", "--out", root / "run", "--config", "bert_2_128_2", "--steps", "30",
                      "--batch-size", "16", "--lr", "2e-3", "--warmup-ratio", "0.1", "--ckpt-interval", "30", "--no-progress")
    assert trained.returncode == 0, trained.stderr
    return root / "run" / "final"


def test_matches_the_pipeline_on_a_checkpoint_bertkit_pretrain_wrote(pretrained_run):
    assert_matches_pipeline(pretrained_run, ["the cat sat on the [MASK] .", "a [MASK] dog ran .", "[MASK] [MASK] sat ."])
    assert_matches_pipeline(pretrained_run.parent / "checkpoint-30", ["red [MASK] blue ."])


def test_matches_the_pipeline_on_the_converted_gluonnlp_fixture(tmp_path):
    """tests/fixtures/zoo/gluonnlp_pretraining: GluonNLP 0.10's own BERT (random weights, its vocabulary)."""
    from pathlib import Path

    from bertkit.zoo.convert import convert

    out = convert(Path(__file__).parent / "fixtures" / "zoo" / "gluonnlp_pretraining" / "model.params", tmp_path / "ckpt")
    assert_matches_pipeline(out, ["He said the [MASK] business doesn 't fit the company 's long-term growth strategy .",
                                  "the company [MASK] not fit our [MASK] growth strategy .", "[MASK] was first ."])


def test_the_packaged_minilm_has_no_mlm_head_and_says_so(minilm_dir):
    for model in ("all-minilm-l6-v2", minilm_dir):
        assert_cli_error(run_cli("fill-mask", "--model", model, "a [MASK] is flying"),
                         str(minilm_dir), "has no masked-LM head", "fill-mask needs a pretraining checkpoint")


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
