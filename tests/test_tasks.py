"""Task readers on small files written in the real layouts, the real GLUE files, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_cli_error, run_cli

from bertkit.errors import BertkitError
from bertkit.tasks import TASKS, get_task, load_task_data
from bertkit.tasks.rotten_tomatoes import load_splits, split_of


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def tsv(*rows) -> str:
    return "".join("\t".join(r) + "\n" for r in rows)


def load(task, d, **kw):
    return load_task_data(get_task(task, regression=kw.pop("regression", False)), d, **kw)


# ---- each reader, real layouts --------------------------------------------------------------
def test_sst2(tmp_path):
    for split in ("train", "dev"):
        write(tmp_path / "SST-2" / f"{split}.tsv", tsv(("sentence", "label"), ("a charming journey ", "1"), ("dull", "0")))
    data = load("sst-2", tmp_path)  # the GLUE root works as well as the task folder
    assert [(e.text_a, e.text_b, e.label) for e in data.train] == [("a charming journey", None, "1"), ("dull", None, "0")]
    assert data.labels == ["0", "1"] and list(data.dev) == ["dev"]
    assert load("sst-2", tmp_path / "SST-2").train[0].where.endswith("train.tsv:2")


def test_cola_has_no_header(tmp_path):
    rows = tsv(("gj04", "1", "", "Our friends won't buy this analysis."), ("gj04", "0", "*", "They drank the pub."))
    write(tmp_path / "train.tsv", rows)
    write(tmp_path / "dev.tsv", rows)
    data = load("cola", tmp_path)
    assert [(e.text_a, e.label) for e in data.train] == [("Our friends won't buy this analysis.", "1"), ("They drank the pub.", "0")]
    assert data.train[1].where.endswith("train.tsv:2")
    assert get_task("cola").main_metric == "mcc"


def test_mrpc_header_with_bom(tmp_path):
    rows = tsv(("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
               ("1", "702876", "702977", 'He said " yes " .', "He agreed ."), ("0", "1", "2", "Cats .", "Dogs ."))
    write(tmp_path / "train.tsv", rows, bom=True)
    write(tmp_path / "dev.tsv", rows, bom=True)
    data = load("mrpc", tmp_path)
    assert (data.train[0].text_a, data.train[0].text_b, data.train[0].label) == ('He said " yes " .', "He agreed .", "1")
    assert get_task("mrpc").metric_set == "f1"


def test_stsb_regression(tmp_path):
    head = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score")
    rows = tsv(head, ("0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.", "An air plane is taking off.", "5.000"),
               ("1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", "A man plays a flute.", "A man plays a bamboo flute.", "3.800"))
    write(tmp_path / "train.tsv", rows)
    write(tmp_path / "dev.tsv", rows)
    data = load("sts-b", tmp_path)
    assert data.labels is None and [e.label for e in data.train] == [5.0, 3.8]
    assert data.train[0].text_b == "An air plane is taking off."


def test_qqp(tmp_path):
    rows = tsv(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
               ("1", "1", "2", "How do I learn?", "How can I learn?", "1"), ("2", "3", "4", "Why?", "What?", "0"))
    write(tmp_path / "train.tsv", rows)
    write(tmp_path / "dev.tsv", rows)
    assert [e.label for e in load("qqp", tmp_path).train] == ["1", "0"]


def test_mnli_matched_and_mismatched(tmp_path):
    head = ("index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2", "label1", "gold_label")
    row = lambda a, b, l: ("0", "1", "1e", "fiction", "(", "(", "(", "(", a, b, l, l)  # noqa: E731
    write(tmp_path / "train.tsv", tsv(head, row("A man sleeps.", "A person rests.", "entailment"), row("A dog.", "A \"cat\".", "contradiction")))
    write(tmp_path / "dev_matched.tsv", tsv(head, row("He runs.", "He moves.", "entailment")))
    write(tmp_path / "dev_mismatched.tsv", tsv(head, row("She sings.", "She is silent.", "contradiction")))
    data = load("mnli", tmp_path)
    assert list(data.dev) == ["dev_matched", "dev_mismatched"]
    assert data.labels == ["contradiction", "entailment", "neutral"]
    assert data.train[1].text_b == 'A "cat".'  # quotes are text, not CSV quoting


@pytest.mark.parametrize("task,labels", [("qnli", ("entailment", "not_entailment")), ("rte", ("entailment", "not_entailment")),
                                         ("wnli", ("1", "0"))])
def test_index_sentence_pair_tasks(tmp_path, task, labels):
    cols = ("index", "question", "sentence", "label") if task == "qnli" else ("index", "sentence1", "sentence2", "label")
    rows = tsv(cols, ("0", "Who came?", "Bob came.", labels[0]), ("1", "Is it red?", "It is blue.", labels[1]))
    write(tmp_path / "train.tsv", rows)
    write(tmp_path / "dev.tsv", rows)
    data = load(task, tmp_path)
    assert [(e.text_a, e.text_b, e.label) for e in data.train][0] == ("Who came?", "Bob came.", labels[0])


def test_xnli_layout(tmp_path):
    write(tmp_path / "XNLI-MT-1.0" / "multinli" / "multinli.train.en.tsv",
          tsv(("premise", "hypo", "label"), ("A man sleeps .", "A person rests .", "entailment"), ("A dog .", "A cat .", "contradictory")))
    dev_head = ("language", "gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                "sentence1", "sentence2", "promptID", "pairID")
    write(tmp_path / "XNLI-1.0" / "xnli.dev.tsv", tsv(dev_head, ("en", "entailment", "", "", "", "", "He runs.", "He moves.", "1", "1"),
                                                      ("de", "contradiction", "", "", "", "", "Er rennt.", "Er sitzt.", "2", "2")))
    data = load("xnli", tmp_path)
    assert [e.label for e in data.train] == ["entailment", "contradiction"]  # XNLI-MT's "contradictory" mapped
    assert [e.text_a for e in data.dev["dev"]] == ["He runs."]  # only the chosen language
    write(tmp_path / "XNLI-MT-1.0" / "multinli" / "multinli.train.de.tsv",
          tsv(("premise", "hypo", "label"), ("Ein Hund .", "Eine Katze .", "contradictory"), ("Er schläft .", "Er ruht .", "entailment")))
    assert [e.text_a for e in load("xnli", tmp_path, lang="de").dev["dev"]] == ["Er rennt."]


def test_imdb_folders(tmp_path):
    for split in ("train", "test"):
        write(tmp_path / "aclImdb" / split / "pos" / "0_9.txt", "Loved it.<br /><br />Great acting.")
        write(tmp_path / "aclImdb" / split / "neg" / "1_2.txt", "Terrible.")
    data = load("imdb", tmp_path)
    assert sorted((e.text_a, e.label) for e in data.train) == [("Loved it. Great acting.", "pos"), ("Terrible.", "neg")]
    assert len(data.dev["dev"]) == 2 and data.labels == ["neg", "pos"]


def test_text_task_any_labels_and_regression(tmp_path):
    write(tmp_path / "train.tsv", tsv(("text", "text_b", "label"), ("a", "b", "yes"), ("c", "d", "no"), ("e", "f", "maybe")))
    write(tmp_path / "dev.tsv", tsv(("text", "text_b", "label"), ("g", "h", "no")))
    data = load("text", tmp_path)
    assert data.labels == ["maybe", "no", "yes"] and data.train[0].text_b == "b"
    write(tmp_path / "r" / "train.tsv", tsv(("sentence", "label"), ("a", "0.5"), ("b", "-2")))
    write(tmp_path / "r" / "dev.tsv", tsv(("sentence", "label"), ("c", "1e-1")))
    data = load("text", tmp_path / "r", regression=True)
    assert [e.label for e in data.train] == [0.5, -2.0] and data.labels is None


def test_rotten_tomatoes_named_data_set():
    try:
        splits = load_splits()
    except BertkitError as e:
        pytest.skip(str(e))
    assert {k: len(v) for k, v in splits.items()} == {"train": 3892, "dev": 376, "test": 595}
    assert {e.label for e in splits["train"]} == {"positive", "negative"}
    all_texts = [e.text_a for v in splits.values() for e in v]
    assert len(all_texts) == len(set(all_texts))
    assert [e.text_a for e in load_splits()["dev"]] == [e.text_a for e in splits["dev"]]  # deterministic
    assert split_of("abandon") in ("train", "dev", "test")
    data = load_task_data(get_task("rotten-tomatoes"), None)
    assert data.labels == ["negative", "positive"] and len(data.dev["dev"]) == 376


def test_every_task_is_registered():
    assert set(TASKS) == {"sst-2", "cola", "mrpc", "sts-b", "qqp", "mnli", "qnli", "rte", "wnli", "xnli", "imdb", "ag-news",
                          "rotten-tomatoes", "text"}
    assert get_task("SST2").name == "sst-2" and get_task("sts-b").kind == "regression"
    # GluonNLP's --task_name spellings
    gluon = {"SST": "sst-2", "MRPC": "mrpc", "STS-B": "sts-b", "QQP": "qqp", "MNLI": "mnli", "RTE": "rte",
             "QNLI": "qnli", "CoLA": "cola", "WNLI": "wnli", "XNLI": "xnli"}
    assert {name: get_task(name).name for name in gluon} == gluon


# ---- real GLUE files ------------------------------------------------------------------------
@pytest.mark.parametrize("task,folder,n_train,n_dev", [
    ("sst-2", "SST-2", 67349, 872), ("cola", "CoLA", 8551, 1043), ("mrpc", "MRPC", 3668, 408),
    ("sts-b", "STS-B", 5749, 1500), ("rte", "RTE", 2490, 277), ("wnli", "WNLI", 635, 71),
])
def test_real_glue_files(data_dir, task, folder, n_train, n_dev):
    data = load(task, data_dir / "glue_data" / folder)
    assert (len(data.train), len(data.dev["dev"])) == (n_train, n_dev)


def test_real_qnli_has_no_train_file(data_dir):
    with pytest.raises(BertkitError, match=r"task qnli: data file .*QNLI/train.tsv not found"):
        load("qnli", data_dir / "glue_data")


# ---- bad input ------------------------------------------------------------------------------
def test_missing_data_file_names_task_and_file(tmp_path):
    write(tmp_path / "train.tsv", tsv(("sentence", "label"), ("a", "1"), ("b", "0")))
    with pytest.raises(BertkitError, match=r"task sst-2: data file .*dev\.tsv not found"):
        load("sst-2", tmp_path)
    (tmp_path / "empty").mkdir()
    r = run_cli("finetune", "--task", "mrpc", "--data-dir", tmp_path / "empty", "--out", tmp_path / "out")
    assert_cli_error(r, "task mrpc: data file", str(tmp_path / "empty" / "train.tsv"), "not found")


def test_malformed_line_names_file_and_line(tmp_path):
    write(tmp_path / "train.tsv", tsv(("index", "sentence1", "sentence2", "label"), ("0", "a", "b", "entailment"), ("1", "only one column")))
    write(tmp_path / "dev.tsv", tsv(("index", "sentence1", "sentence2", "label"), ("0", "a", "b", "entailment")))
    with pytest.raises(BertkitError, match=r"train\.tsv:3: malformed line: 2 tab-separated column\(s\)"):
        load("rte", tmp_path)


def test_dev_label_not_seen_in_training(tmp_path):
    write(tmp_path / "train.tsv", tsv(("text", "label"), ("a", "cat"), ("b", "dog")))
    write(tmp_path / "dev.tsv", tsv(("text", "label"), ("c", "cat"), ("d", "bird")))
    with pytest.raises(BertkitError, match=r"dev\.tsv:3: label 'bird' was not seen in training \(training labels: cat, dog\)"):
        load("text", tmp_path)


def test_label_outside_a_glue_tasks_labels(tmp_path):
    write(tmp_path / "train.tsv", tsv(("sentence", "label"), ("a", "1"), ("b", "positive")))
    write(tmp_path / "dev.tsv", tsv(("sentence", "label"), ("a", "1")))
    with pytest.raises(BertkitError, match=r"train\.tsv:3: label 'positive' is not one of task sst-2's labels"):
        load("sst-2", tmp_path)


def test_empty_text(tmp_path):
    write(tmp_path / "train.tsv", tsv(("sentence", "label"), ("a", "1"), ("   ", "0")))
    write(tmp_path / "dev.tsv", tsv(("sentence", "label"), ("a", "1")))
    with pytest.raises(BertkitError, match=r"train\.tsv:3: empty text in sentence"):
        load("sst-2", tmp_path)


def test_non_numeric_regression_label(tmp_path):
    head = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score")
    write(tmp_path / "train.tsv", tsv(head, ("0", "g", "f", "y", "o", "s", "s", "A b.", "C d.", "high")))
    write(tmp_path / "dev.tsv", tsv(head, ("0", "g", "f", "y", "o", "s", "s", "A b.", "C d.", "1.0")))
    with pytest.raises(BertkitError, match=r"train\.tsv:2: label 'high' is not a number \(task sts-b is a regression task\)"):
        load("sts-b", tmp_path)


def test_text_task_header_must_name_columns(tmp_path):
    write(tmp_path / "train.tsv", tsv(("a", "b"), ("x", "y")))
    write(tmp_path / "dev.tsv", tsv(("a", "b"), ("x", "y")))
    with pytest.raises(BertkitError, match=r"train\.tsv:1: header must name a 'text'"):
        load("text", tmp_path)


def test_unknown_task_and_regression_misuse(tmp_path):
    with pytest.raises(BertkitError, match="unknown task 'squad'"):
        get_task("squad")
    with pytest.raises(BertkitError, match="--regression applies to --task text only"):
        get_task("sst-2", regression=True)


# ---- AG News ------------------------------------------------------------------------------------
def test_ag_news_reads_the_distributed_csv_layout(tmp_path, data_dir):
    """ag_news_csv/: class index 1-4, title, description (backslashes for line breaks); classes.txt."""
    import shutil

    d = tmp_path / "ag_news_csv"
    d.mkdir()
    shutil.copyfile(data_dir / "ag_news_csv" / "classes.txt", d / "classes.txt")
    rows = (data_dir / "ag_news_csv" / "test.csv").read_text(encoding="utf-8").splitlines()
    (d / "train.csv").write_text("\n".join(rows[:7000]) + "\n", encoding="utf-8")
    (d / "test.csv").write_text("\n".join(rows[7000:]) + "\n", encoding="utf-8")
    data = load_task_data(get_task("AG_News"), d)
    assert data.labels == ["World", "Sports", "Business", "Sci/Tech"]
    assert len(data.train) == 7000 and len(data.dev["dev"]) == 600
    first = data.train[0]
    assert first.label == "Business" and first.text_a.startswith("Fears for T N pension after talks Unions representing")
    assert not any("\\" in e.text_a for e in data.train)  # the description's line breaks are spaces
    assert {e.label for e in data.train} == set(data.labels)
    every = [e.label for e in data.train + data.dev["dev"]]  # the 7,600-row test split: 1,900 of each class
    assert {label: every.count(label) for label in data.labels} == dict.fromkeys(data.labels, 1900)


def test_ag_news_errors_name_the_file_and_line(tmp_path):
    d = tmp_path / "ag"
    d.mkdir()
    (d / "train.csv").write_text('"1","a title","a text"\n"5","bad","class"\n')
    (d / "test.csv").write_text('"2","t","d"\n')
    with pytest.raises(BertkitError, match=r"train.csv:2: class index '5' is not 1-4"):
        load_task_data(get_task("ag-news"), d)
    (d / "train.csv").write_text('"1","only two fields"\n')
    with pytest.raises(BertkitError, match=r"train.csv:1: expected 3 fields"):
        load_task_data(get_task("ag-news"), d)
    (d / "test.csv").unlink()
    (d / "train.csv").write_text('"1","t","d"\n')
    with pytest.raises(BertkitError, match="test.csv not found"):
        load_task_data(get_task("ag-news"), d)
