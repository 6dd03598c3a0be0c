"""Every zoo name: the Hub repository it resolves to, the error when it is absent offline, what it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bertkit
from bertkit.config import BertConfig
from bertkit.model import count_parameters
from bertkit.zoo.names import ZOO, lookup
from conftest import run_cli

# GluonNLP 0.10's BERT table (gluonnlp/model/bert.py) and where Google's / the authors' weights are on the Hub.
GLUONNLP = {
    "bert_12_768_12/book_corpus_wiki_en_uncased": "google-bert/bert-base-uncased",
    "bert_12_768_12/book_corpus_wiki_en_cased": "google-bert/bert-base-cased",
    "bert_12_768_12/openwebtext_book_corpus_wiki_en_uncased": None,
    "bert_12_768_12/wiki_multilingual_uncased": "google-bert/bert-base-multilingual-uncased",
    "bert_12_768_12/wiki_multilingual_cased": "google-bert/bert-base-multilingual-cased",
    "bert_12_768_12/wiki_cn_cased": "google-bert/bert-base-chinese",
    "bert_24_1024_16/book_corpus_wiki_en_uncased": "google-bert/bert-large-uncased",
    "bert_24_1024_16/book_corpus_wiki_en_cased": "google-bert/bert-large-cased",
    "bert_12_768_12/scibert_scivocab_uncased": "allenai/scibert_scivocab_uncased",
    "bert_12_768_12/scibert_scivocab_cased": "allenai/scibert_scivocab_cased",
    "bert_12_768_12/scibert_basevocab_uncased": None,
    "bert_12_768_12/scibert_basevocab_cased": None,
    "bert_12_768_12/biobert_v1.0_pmc_cased": None,
    "bert_12_768_12/biobert_v1.0_pubmed_cased": None,
    "bert_12_768_12/biobert_v1.0_pubmed_pmc_cased": None,
    "bert_12_768_12/biobert_v1.1_pubmed_cased": "dmis-lab/biobert-v1.1",
    "bert_12_768_12/clinicalbert_uncased": None,
    "bert_12_768_12/kobert_news_wiki_ko_cased": None,
}
SMALL = {f"bert_{layers}_{hidden}_{hidden // 64}/uncased": f"google/bert_uncased_L-{layers}_H-{hidden}_A-{hidden // 64}"
         for layers in (2, 4, 6, 8, 10, 12) for hidden in (128, 256, 512, 768)}
EXPECTED = {**GLUONNLP, **SMALL}


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet"))
    monkeypatch.setenv("BERTKIT_CACHE", str(tmp_path / "bertkit"))


def fake_snapshot(tmp_path: Path, repo: str, lowercase: bool | None = None) -> Path:
    """A cached snapshot with the files `resolve` looks for (their contents do not matter to it)."""
    folder = tmp_path / "hf" / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / ("ab" * 20)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    if lowercase is not None:
        (snapshot / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
    (snapshot / "model.safetensors").write_bytes(b"")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("ab" * 20)
    return snapshot


def test_the_table_is_gluonnlps_and_googles():
    assert {name: e.repo for name, e in ZOO.items()} == EXPECTED
    assert len(SMALL) == 24


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_name_resolves_to_its_hub_repository_and_says_what_to_fetch_offline(name, tmp_path, monkeypatch):
    repo = EXPECTED[name]
    model, dataset = name.split("/")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(bertkit.BertkitError) as e:
        bertkit.resolve(name)
    message = str(e.value)
    assert "\n" not in message
    if repo is None:
        entry = ZOO[name]
        assert message.startswith(f"{name}: KoBERT" if "kobert" in name else f"{name} has no Hugging Face Hub copy")
        if "kobert" not in name:
            assert f"{model}_{dataset}-{entry.gluonnlp_params_sha1}.params" in message
            assert str(tmp_path / "mxnet" / "models") in message
        return
    folder = tmp_path / "hf" / ("models--" + repo.replace("/", "--"))
    assert message == (f"{name} (Hub repository {repo}) is not on this machine and downloads are off (HF_HUB_OFFLINE is "
                       f"set, or --offline); fetch it on a machine with network with `bertkit zoo --fetch {name}`, "
                       f"which puts it in {folder}")
    snapshot = fake_snapshot(tmp_path, repo, lowercase=not ZOO[name].cased)
    assert bertkit.resolve(name) == snapshot
    assert bertkit.resolve(model, dataset=dataset) == snapshot


def test_old_hub_ids_are_aliases(tmp_path):
    snapshot = fake_snapshot(tmp_path, "google-bert/bert-base-multilingual-cased", lowercase=False)
    assert bertkit.resolve("bert-base-multilingual-cased") == snapshot
    assert lookup("bert-large-uncased").name == "bert_24_1024_16/book_corpus_wiki_en_uncased"


def test_names_that_are_almost_zoo_names():
    with pytest.raises(bertkit.BertkitError, match=r"'bert_12_768_12' names a shape, not pretrained weights: add a dataset, "
                                                   r"e.g. bert_12_768_12/book_corpus_wiki_en_uncased"):
        bertkit.load("bert_12_768_12")
    with pytest.raises(bertkit.BertkitError, match="unknown zoo name 'bert_2_128_2/cased' \\(datasets for bert_2_128_2: uncased\\)"):
        bertkit.load("bert_2_128_2", dataset="cased")
    with pytest.raises(bertkit.BertkitError, match="dataset='uncased' goes with a zoo model name"):
        bertkit.load("all-minilm-l6-v2", dataset="uncased")


def test_parameter_counts():
    for name in ("bert_2_128_2/uncased", "bert_4_256_4/uncased"):
        e = ZOO[name]
        cfg = BertConfig.from_preset(f"bert_{e.layers}_{e.hidden}_{e.heads}", vocab_size=e.vocab_size)
        assert e.parameters == count_parameters(bertkit.BertModel(cfg))
    assert ZOO["bert_12_768_12/book_corpus_wiki_en_uncased"].parameters == 109_482_240  # BERT-base, as published
    assert ZOO["bert_24_1024_16/book_corpus_wiki_en_uncased"].parameters == 335_141_888  # BERT-large


def test_cli_zoo_lists_every_name(tmp_path):
    fake_snapshot(tmp_path, "google-bert/bert-base-chinese")
    env = {"HF_HUB_CACHE": str(tmp_path / "hf"), "MXNET_HOME": str(tmp_path / "mxnet")}
    rows = [json.loads(line) for line in run_cli("zoo", "--json", env=env).stdout.splitlines()]
    assert [r["name"] for r in rows] == list(EXPECTED)
    chinese = next(r for r in rows if r["name"] == "bert_12_768_12/wiki_cn_cased")
    assert chinese == {"name": "bert_12_768_12/wiki_cn_cased", "repo": "google-bert/bert-base-chinese", "layers": 12,
                       "hidden": 768, "heads": 12, "cased": True, "languages": "Chinese", "vocab_size": 21128,
                       "parameters": 102_267_648, "here": "hf-cache", "note": ""}
    assert sum(r["here"] != "" for r in rows) == 1
    table = run_cli("zoo", env=env).stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "L"] and len(table) == 1 + len(EXPECTED) + 2
    line = next(t for t in table if t.startswith("bert_12_768_12/wiki_cn_cased "))
    assert line.split()[1:8] == ["12", "768", "12", "102M", "cased", "yes", "google-bert/bert-base-chinese;"]


def test_cased_model_without_casing_in_its_repository(tmp_path):
    # dmis-lab/biobert-v1.1 ships no tokenizer_config.json; the zoo knows it is cased.
    snapshot = fake_snapshot(tmp_path, "dmis-lab/biobert-v1.1")
    (snapshot / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nCell\n")
    directory = bertkit.resolve("bert_12_768_12/biobert_v1.1_pubmed_cased")
    assert directory.parent == tmp_path / "bertkit" / "zoo"
    assert json.loads((directory / "tokenizer_config.json").read_text())["do_lower_case"] is False
    assert (directory / "vocab.txt").resolve() == (snapshot / "vocab.txt").resolve()
    assert not (snapshot / "tokenizer_config.json").exists()  # the Hugging Face cache is left as it was
    assert bertkit.BertTokenizer.from_dir(directory).tokenize("Cell") == ["Cell"]
    # An uncased model, or one whose repository says its casing, is used straight from the cache.
    uncased = fake_snapshot(tmp_path, "google/bert_uncased_L-2_H-128_A-2")
    assert bertkit.resolve("bert_2_128_2/uncased") == uncased
