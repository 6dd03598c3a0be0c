"""What a GluonNLP or d2l user types (issue 21, item 2 and "Bad input"): `--vocab` as a path, a model
name or a GluonNLP vocabulary name; GluonNLP's task names in any case; and the mistakes they can
make, each a one-line error: shards of the other NSP kind, a glob that matches nothing, a
vocabulary name nobody knows.

Zoo names resolve without a download: the packaged all-minilm-l6-v2 stands in, in a throw-away
Hugging Face cache, for the Hub repository the name maps to.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bertkit.cli import main
from conftest import assert_cli_error, run_cli, stand_in_cache, tiny_checkpoint

WORDS = ("river town station bridge king army music album song film game player team season city church road "
         "school war ship island family night year water mountain village story book crane the a of was in "
         "built played released won recorded visited opened").split()
GLUONNLP_TASKS = {"SST": "sst-2", "MRPC": "mrpc", "STS-B": "sts-b", "QQP": "qqp", "MNLI": "mnli", "RTE": "rte",
                  "QNLI": "qnli", "CoLA": "cola", "WNLI": "wnli", "XNLI": "xnli"}


def write_corpus(path: Path, documents: int = 12, seed: int = 0) -> Path:
    """Google's layout (one sentence per line, a blank line between documents), made of WORDS."""
    rng = random.Random(seed)
    lines = []
    for _ in range(documents):
        lines += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + " ." for _ in range(6)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def shards(tmp_path: Path, name: str, vocab, *extra: str) -> Path:
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / name
    assert main(["pretrain-data", "--input", str(corpus), "--vocab", str(vocab), "--out", str(out), "--max-seq-length",
                 "32", "--max-predictions-per-seq", "5", "--dupe-factor", "2", "--no-progress", *extra]) == 0
    return out


def npz_bytes(directory: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(directory.glob("*.npz"))]


# ---- --vocab forms ------------------------------------------------------------------------------------
def test_vocab_path_model_name_and_gluonnlp_vocabulary_name_give_the_same_shards(tmp_path, minilm_dir, monkeypatch, capsys):
    from bertkit.zoo.names import lookup

    repo = lookup("bert_12_768_12/book_corpus_wiki_en_uncased").repo
    assert repo and lookup("bert-base-uncased").repo == repo
    stand_in_cache(tmp_path / "hf-cache", repo, minilm_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forms = [minilm_dir, minilm_dir / "vocab.txt", "all-minilm-l6-v2", "book_corpus_wiki_en_uncased",
             "bert_12_768_12/book_corpus_wiki_en_uncased", "bert-base-uncased"]
    made = [npz_bytes(shards(tmp_path, f"form{i}", form)) for i, form in enumerate(forms)]
    capsys.readouterr()
    assert made[0] and all(m == made[0] for m in made), "every --vocab form must name the same vocabulary"
    for i in range(len(forms)):
        assert json.loads((tmp_path / f"form{i}" / "stats.json").read_text())["settings"]["lowercase"] is True


def test_unknown_vocabulary_name_is_a_one_line_error(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    args = ["pretrain-data", "--input", corpus, "--out", tmp_path / "out"]
    assert_cli_error(run_cli(*args, "--vocab", "no_such_vocabulary"),
                     "--vocab no_such_vocabulary", "no model or vocabulary of that name")
    # a GluonNLP name bertkit knows, but not on this machine and no network: says so, in one line
    offline = {"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1", "MXNET_HOME": str(tmp_path / "mx")}
    assert_cli_error(run_cli(*args, "--vocab", "wiki_multilingual_uncased", env=offline),
                     "--vocab wiki_multilingual_uncased", "bert_12_768_12/wiki_multilingual_uncased")
    assert not (tmp_path / "out").exists()


# ---- task names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gluonnlp_name", list(GLUONNLP_TASKS))
def test_gluonnlp_task_names_in_any_case(gluonnlp_name):
    from bertkit.tasks.readers import get_task

    for spelling in (gluonnlp_name, gluonnlp_name.lower(), gluonnlp_name.upper(), gluonnlp_name.swapcase()):
        assert get_task(spelling).name == GLUONNLP_TASKS[gluonnlp_name], spelling


def test_finetune_takes_gluonnlps_task_name(tmp_path, capsys):
    """`finetune --task SST --data-dir glue_data` (GluonNLP's name; the GLUE folder above SST-2/)."""
    glue = tmp_path / "glue_data" / "SST-2"
    glue.mkdir(parents=True)
    rows = [("the film was a song", "1"), ("the war was a night", "0"), ("a king played music", "1"), ("the road", "0")]
    for split in ("train", "dev"):
        (glue / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    model = tiny_checkpoint(tmp_path / "encoder", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS)
    for name, data_dir in (("SST", glue.parent), ("sst", glue)):
        capsys.readouterr()
        assert main(["finetune", "--task", name, "--data-dir", str(data_dir), "--model", str(model), "--out",
                     str(tmp_path / name), "--epochs", "1", "--batch-size", "2", "--quiet"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["task"] == "sst-2", result
    assert_cli_error(run_cli("finetune", "--task", "SST-5", "--data-dir", glue, "--out", tmp_path / "x"), "unknown task 'SST-5'")


# ---- shards of the other NSP kind ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def nsp_and_mlm_shards(tmp_path_factory):
    """The same small corpus as next-sentence pair shards and as --no-nsp single segments."""
    root = tmp_path_factory.mktemp("kinds")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS) + "\n")
    return shards(root, "pairs", vocab), shards(root, "single", vocab, "--no-nsp")


def pretrain_args(data, out, *extra):
    return ["pretrain", "--data", data, "--out", out, "--config", "bert_2_128_2", "--batch-size", "8", "--ckpt-interval",
            "1", "--no-progress", *extra]


def test_eval_shards_of_the_other_kind_are_a_one_line_error(nsp_and_mlm_shards, tmp_path):
    pairs, single = nsp_and_mlm_shards
    msg = assert_cli_error(run_cli(*pretrain_args(pairs, tmp_path / "a", "--eval-data", single, "--steps", "1")),
                           f"--eval-data {single}", "--no-nsp single segments", f"--data {pairs}", "next-sentence pairs")
    assert msg.index("--eval-data") < msg.index("--no-nsp single") < msg.index("--data ") < msg.index("next-sentence")
    msg = assert_cli_error(run_cli(*pretrain_args(single, tmp_path / "b", "--eval-data", pairs, "--steps", "1")),
                           f"--eval-data {pairs}", "next-sentence pairs", f"--data {single}", "--no-nsp single segments")
    assert msg.index("--eval-data") < msg.index("next-sentence") < msg.index("--data ") < msg.index("--no-nsp single")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resuming_a_run_on_shards_of_the_other_kind_is_a_one_line_error(nsp_and_mlm_shards, tmp_path, capsys):
    pairs, single = nsp_and_mlm_shards
    for first, then, found, wanted in ((pairs, single, "of pretraining", "masked-LM-only pretraining (--no-nsp shards)"),
                                       (single, pairs, "of masked-LM-only pretraining (--no-nsp shards)", "not of pretraining")):
        out = tmp_path / first.name
        assert main([str(a) for a in pretrain_args(first, out, "--steps", "1")]) == 0
        capsys.readouterr()
        before = (out / "metrics.jsonl").read_text()
        assert_cli_error(run_cli(*pretrain_args(then, out, "--steps", "2", "--resume")),
                         "--resume", str(out / "checkpoint-1"), found, wanted)
        assert (out / "metrics.jsonl").read_text() == before  # refused before anything was written
    # the same kind resumes
    assert main([str(a) for a in pretrain_args(single, tmp_path / single.name, "--steps", "2", "--resume")]) == 0


def test_a_glob_over_both_kinds_is_a_one_line_error(nsp_and_mlm_shards, tmp_path):
    pairs, _ = nsp_and_mlm_shards
    pattern = str(pairs.parent / "*" / "shard-*.npz")
    assert_cli_error(run_cli(*pretrain_args(pattern, tmp_path / "g", "--steps", "1")),
                     pattern, "--no-nsp shards", "next-sentence pair shards", "one kind")


# ---- a glob that matches nothing ------------------------------------------------------------------------
def test_a_glob_that_matches_nothing(nsp_and_mlm_shards, tmp_path):
    pairs, _ = nsp_and_mlm_shards
    pattern = str(tmp_path / "nowhere" / "*.npz")
    assert_cli_error(run_cli(*pretrain_args(pattern, tmp_path / "p", "--steps", "1")), pattern, "no .npz shards match")
    assert_cli_error(run_cli(*pretrain_args(pairs, tmp_path / "q", "--steps", "1", "--eval-data", pattern)),
                     pattern, "no .npz shards match")
    # pretrain-data expands a quoted pattern itself (GluonNLP's --input_file takes them)
    corpus_pattern = str(tmp_path / "nowhere" / "*.txt")
    assert_cli_error(run_cli("pretrain-data", "--input", corpus_pattern, "--vocab", pairs / "vocab.txt", "--out",
                             tmp_path / "r"), corpus_pattern, "the pattern matches no file")


def test_pretrain_data_expands_a_quoted_pattern(nsp_and_mlm_shards, tmp_path, wiki_valid_2000):
    pairs, _ = nsp_and_mlm_shards
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(2):
        (corpus / f"part-{i}.txt").write_text("\n".join(wiki_valid_2000[i * 200:(i + 1) * 200]) + "\n")
    common = ("--vocab", pairs / "vocab.txt", "--max-seq-length", "64", "--dupe-factor", "1", "--seed", "3")
    by_pattern = run_cli("pretrain-data", "--input", str(corpus / "part-*.txt"), "--out", tmp_path / "a", *common)
    by_names = run_cli("pretrain-data", "--input", corpus / "part-0.txt", corpus / "part-1.txt", "--out", tmp_path / "b", *common)
    assert by_pattern.returncode == 0 and by_names.returncode == 0, by_pattern.stderr + by_names.stderr
    shards = sorted(p.name for p in (tmp_path / "a").glob("*.npz"))
    assert shards and shards == sorted(p.name for p in (tmp_path / "b").glob("*.npz"))
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in shards)
