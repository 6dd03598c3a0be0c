"""CoNLL readers on the real files (published sentence and token counts), IOB1 -> BIO, the label
list, windows for long sentences (every word tagged once), and bad input as one-line errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import assert_cli_error, run_cli

from bertkit.errors import BertkitError
from bertkit.tagging.conll import load_tagging_data, read_conll
from bertkit.tagging.labels import entity_spans
from bertkit.tagging.features import TaggedWindows
from bertkit.tagging.windows import plan_windows

# CoNLL-2003 English as published (Tjong Kim Sang & De Meulder, 2003): sentences and tokens.
PUBLISHED = {"eng.train": (14041, 203621), "eng.testa": (3250, 51362), "eng.testb": (3453, 46435)}


@pytest.fixture(scope="module")
def conll(data_dir):
    return load_tagging_data("conll2003", data_dir / "conll2003")


def test_reader_counts_match_the_published_ones(data_dir):
    for name, (n_sentences, n_tokens) in PUBLISHED.items():
        sentences = read_conll(data_dir / "conll2003" / name, 4)
        assert (len(sentences), sum(len(s.words) for s in sentences)) == (n_sentences, n_tokens), name
        assert all(len(s.words) == len(s.tags) == len(s.lines) for s in sentences)
    first = read_conll(data_dir / "conll2003" / "eng.train", 4)[0]
    assert first.words[:3] == ["EU", "rejects", "German"] and first.tags[:3] == ["I-ORG", "O", "I-MISC"]
    assert first.lines[0] == 3  # line 1 is -DOCSTART-, line 2 blank


def test_conll2003_task_is_bio_with_the_usual_labels(conll):
    assert conll.labels == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    assert conll.scheme == "bio" and set(conll.dev) == {"dev", "test"}
    assert [len(conll.train), len(conll.dev["dev"]), len(conll.dev["test"])] == [14041, 3250, 3453]
    for sentences in (conll.train, conll.dev["dev"]):
        for s in sentences:
            for kind, start, end in entity_spans(s.tags):  # every entity starts with B-, continues with I-
                assert s.tags[start] == f"B-{kind}" and all(t == f"I-{kind}" for t in s.tags[start + 1 : end])
    entities = sum(len(entity_spans(s.tags)) for s in conll.dev["test"])
    assert entities == 5648  # the published test-set entity count


def test_windows_cover_every_word_once():
    rnd = random.Random(0)
    for _ in range(300):
        counts = [rnd.randint(0, 6) for _ in range(rnd.randint(0, 60))]
        capacity = rnd.randint(1, 20)
        windows = plan_windows(counts, capacity)
        owned = sorted(w for win in windows for w in win.owned)
        assert owned == list(range(len(counts)))
        for win in windows:
            assert sum(min(max(c, 1), capacity) for c in counts[win.start : win.end]) <= capacity
            assert all(win.start <= w < win.end for w in win.owned)
    assert len(plan_windows([1] * 10, 10)) == 1  # a sentence that fits is one window


def test_long_sentences_in_windows_give_every_real_word_a_position(conll, minilm):
    """Dev at --max-len 16: most sentences need several windows; each word still gets exactly one
    first-piece position, no window is longer than 16, and nothing is dropped."""
    sentences = conll.dev["dev"][:400]
    data = TaggedWindows(minilm.tokenizer, [s.words for s in sentences], None, 16)
    assert data.split > 50 and data.lengths.max() <= 16
    seen = [np.zeros(len(s.words), dtype=int) for s in sentences]
    for i in range(len(data)):
        np.add.at(seen[data.sentence[i]], data.words[i], 1)
        ids = data.ids[i]
        assert ids[0] == minilm.tokenizer.cls_id and ids[-1] == minilm.tokenizer.sep_id
        assert all(0 < p < len(ids) - 1 for p in data.positions[i])
    assert all((s == 1).all() for s in seen)


# ---- bad input ------------------------------------------------------------------------------
def write(directory, **files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", ".")).write_text(text)
    return directory


GOOD = "Alice B-PER\nlives O\nin O\nParis B-LOC\n\nBob B-PER\n\n"


def finetune_cli(tmp_path, data):
    return run_cli("finetune", "--task", "tags", "--data-dir", data, "--model", "all-minilm-l6-v2", "--out", tmp_path / "o",
                   "--quiet", env={"OMP_NUM_THREADS": "1"})


def test_too_few_columns_names_file_and_line(tmp_path):
    data = write(tmp_path / "d", train_txt=GOOD, dev_txt="Alice B-PER\nParis\n")
    assert_cli_error(finetune_cli(tmp_path, data), "dev.txt:2:", "1 column(s), expected 2")
    with pytest.raises(BertkitError, match=r"eng.train:1: 2 column\(s\), expected 4 \(word POS chunk tag\)"):
        write(tmp_path / "c", eng_train="EU I-ORG\n", eng_testa="EU NNP I-NP I-ORG\n")
        load_tagging_data("conll2003", tmp_path / "c")


def test_tag_not_seen_in_training_names_file_and_line(tmp_path):
    data = write(tmp_path / "d", train_txt=GOOD, dev_txt="Alice B-PER\n\nAcme B-ORG\n")
    assert_cli_error(finetune_cli(tmp_path, data), "dev.txt:3:", "'B-ORG'", "never appears in training")
    with pytest.raises(BertkitError, match=r"test.txt:1: tag 'I-MISC'"):
        load_tagging_data("tags", write(tmp_path / "t", train_txt=GOOD, dev_txt=GOOD, test_txt="x I-MISC\n"))
    pos = write(tmp_path / "p", train_txt="the DT\ncat NN\n", dev_txt="the DT\nsat VBD\n")
    with pytest.raises(BertkitError, match=r"dev.txt:2: tag 'VBD' never appears in training"):
        load_tagging_data("tags", pos)


def test_empty_file_is_an_error(tmp_path):
    data = write(tmp_path / "d", train_txt="\n\n", dev_txt=GOOD)
    assert_cli_error(finetune_cli(tmp_path, data), "train.txt: no sentences (the file is empty)")
    with pytest.raises(BertkitError, match="eng.testa not found"):
        load_tagging_data("conll2003", write(tmp_path / "c", eng_train="EU NNP I-NP I-ORG\n"))


def test_training_file_without_entities_warns(tmp_path):
    data = write(tmp_path / "d", train_txt="a O\nb O\n\nc O\n", dev_txt="a O\n")
    with pytest.warns(UserWarning, match=r"train.txt: no entities in the training data"):
        loaded = load_tagging_data("tags", data)
    assert loaded.labels == ["O"] and loaded.scheme == "bio"


def test_plain_tags_are_scored_by_accuracy(tmp_path):
    pos = write(tmp_path / "p", train_txt="the DT\ncat NN\n\nsat VBD\n", dev_txt="the DT\ncat NN\n")
    loaded = load_tagging_data("tags", pos)
    assert loaded.scheme == "tags" and loaded.labels == ["DT", "NN", "VBD"]
