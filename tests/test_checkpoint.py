"""Checkpoint directories: round trips, name resolution, `.bin` files, and every kind of bad checkpoint
(each a clear one-line error, in Python and from the CLI)."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from conftest import assert_cli_error, randomize_, run_cli
from safetensors.torch import load_file, save_file

import bertkit
from bertkit.checkpoint import to_hf_state_dict
from bertkit.tokenizer import BertTokenizer, write_vocab

VOCAB_SIZE = 1000


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory, minilm_vocab):
    """The first 1,000 entries of the MiniLM vocabulary: all the special tokens, small files."""
    tokens = minilm_vocab.read_text(encoding="utf-8").splitlines()[:VOCAB_SIZE]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    write_vocab(tokens, path)
    return BertTokenizer(path)


@pytest.fixture(scope="module")
def good(tmp_path_factory, small_tokenizer):
    """(model, directory) of a small random encoder saved by bertkit."""
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=VOCAB_SIZE)
    model = randomize_(bertkit.BertModel(cfg), seed=7).eval()
    directory = bertkit.save(model, tmp_path_factory.mktemp("good") / "ckpt", tokenizer=small_tokenizer)
    return model, directory


def outputs(model, tok, texts=("the cat sat on the mat", "a b c", "hello world !")):
    with torch.inference_mode():
        return model(tok(list(texts)))


def assert_same_model(a, b, tok):
    for x, y in zip(outputs(a, tok), outputs(b, tok)):
        assert torch.equal(x, y)


# ---- round trip ---------------------------------------------------------------------------------
def test_save_writes_the_interchange_layout(good):
    model, directory = good
    assert sorted(p.name for p in directory.iterdir()) == [
        "bertkit.json", "config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt",
    ]
    cfg = json.loads((directory / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["architectures"] == ["BertModel"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]) == (2, 128, 2, VOCAB_SIZE)
    assert json.loads((directory / "bertkit.json").read_text())["head"] == "encoder"
    names = set(load_file(directory / "model.safetensors"))
    assert "encoder.layer.1.attention.self.value.weight" in names and "pooler.dense.bias" in names
    assert not any("qkv" in n or n.startswith("layers.") for n in names)  # HF names only
    assert len(names) == 5 + 16 * 2 + 2


def test_round_trip_is_exact(good, small_tokenizer):
    model, directory = good
    back = bertkit.load(directory)
    assert back.load_report == {"missing": [], "unexpected": [], "directory": str(directory)}
    assert back.tokenizer.vocab == small_tokenizer.vocab and not back.training
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert_same_model(model, back, small_tokenizer)


def test_config_round_trip_keeps_unknown_keys(tmp_path, good):
    _, directory = good
    shutil.copytree(directory, tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["some_future_key"] = {"x": 1}
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    model = bertkit.load(tmp_path / "c")
    assert model.config.extra["some_future_key"] == {"x": 1}
    assert model.config.to_dict()["some_future_key"] == {"x": 1}


# ---- names: packaged model and the local Hugging Face cache ---------------------------------------
def test_packaged_model_name_resolves(minilm_dir):
    assert bertkit.resolve("all-minilm-l6-v2") == minilm_dir
    assert bertkit.resolve("ALL-MiniLM-L6-v2") == minilm_dir
    assert (minilm_dir / "config.json").is_file() and (minilm_dir / "model.safetensors").is_file()


def make_hf_cache(root, directory, model_id="org/name", snapshots=("0123abcd",), ref="0123abcd"):
    repo = root / ("models--" + model_id.replace("/", "--"))
    for snap in snapshots:
        shutil.copytree(directory, repo / "snapshots" / snap)
    if ref is not None:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(ref + "\n")
    return repo


def test_model_id_from_a_local_hf_cache(tmp_path, monkeypatch, good, small_tokenizer):
    model, directory = good
    repo = make_hf_cache(tmp_path, directory, snapshots=("0123abcd", "ffff0000"), ref="0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert bertkit.resolve("org/name") == repo / "snapshots" / "0123abcd"  # refs/main wins
    loaded = bertkit.load("org/name")
    assert loaded.load_report["directory"] == str(repo / "snapshots" / "0123abcd")
    assert_same_model(model, loaded, small_tokenizer)
    # HF_HOME is the fallback root (its hub/ folder) when HF_HUB_CACHE is not set.
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    with pytest.raises(bertkit.BertkitError, match="unknown model 'org/name'"):
        bertkit.resolve("org/name")
    shutil.copytree(tmp_path / repo.name, tmp_path / "home" / "hub" / repo.name)
    assert bertkit.resolve("org/name") == tmp_path / "home" / "hub" / repo.name / "snapshots" / "0123abcd"


def test_hf_cache_without_refs_takes_the_newest_snapshot_with_a_config(tmp_path, monkeypatch, good):
    _, directory = good
    repo = make_hf_cache(tmp_path, directory, snapshots=("old", "new", "broken"), ref=None)
    os.utime(repo / "snapshots" / "old", (1_000_000, 1_000_000))
    os.utime(repo / "snapshots" / "new", (2_000_000, 2_000_000))
    os.remove(repo / "snapshots" / "broken" / "config.json")  # newest folder, but not a checkpoint
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert bertkit.resolve("org/name") == repo / "snapshots" / "new"


def test_cli_info_finds_a_model_in_the_hf_cache(tmp_path, good):
    _, directory = good
    make_hf_cache(tmp_path, directory, model_id="someone/tiny-bert")
    r = run_cli("info", "someone/tiny-bert", "--json", env={"HF_HUB_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["shape"] == "bert_2_128_2" and report["vocab_size"] == VOCAB_SIZE
    assert report["directory"].endswith("models--someone--tiny-bert/snapshots/0123abcd")


def test_unknown_model_name_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(bertkit.BertkitError) as e:
        bertkit.load("bert-base-nowhere")
    msg = str(e.value)
    assert "unknown model 'bert-base-nowhere'" in msg and "all-minilm-l6-v2" in msg and str(tmp_path) in msg
    assert_cli_error(run_cli("info", "bert-base-nowhere", env={"HF_HUB_CACHE": str(tmp_path)}),
                     "unknown model 'bert-base-nowhere'", "all-minilm-l6-v2")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(bertkit.BertkitError) as e:
        bertkit.BertConfig.from_preset("bert_3_100_7")
    msg = str(e.value)
    assert msg.startswith("unknown config 'bert_3_100_7'")
    for name in bertkit.PRESETS:
        assert name in msg
    for required in ("bert_12_768_12", "bert_24_1024_16", "bert_6_384_12", "bert_4_512_8", "bert_4_256_4", "bert_2_128_2"):
        layers, hidden, heads = bertkit.PRESETS[required]
        cfg = bertkit.BertConfig.from_preset(required, vocab_size=123)
        assert cfg.shape_name() == required and cfg.intermediate_size == 4 * hidden and cfg.vocab_size == 123


# ---- .bin files, loaded with weights_only ------------------------------------------------------
def test_pytorch_model_bin_loads(tmp_path, good, small_tokenizer):
    model, directory = good
    shutil.copytree(directory, tmp_path / "bin")
    os.remove(tmp_path / "bin" / "model.safetensors")
    torch.save(to_hf_state_dict(model), tmp_path / "bin" / "pytorch_model.bin")
    loaded = bertkit.load(tmp_path / "bin")
    assert loaded.load_report["missing"] == [] and loaded.load_report["unexpected"] == []
    assert_same_model(model, loaded, small_tokenizer)


class _Exploit:
    """A pickle that would run code when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_runs_code_is_refused(tmp_path, good):
    _, directory = good
    shutil.copytree(directory, tmp_path / "evil")
    os.remove(tmp_path / "evil" / "model.safetensors")
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embeddings.word_embeddings.weight": _Exploit(marker)}, f, protocol=2)
    with pytest.raises(bertkit.BertkitError, match=r"pytorch_model.bin: cannot read weights safely"):
        bertkit.load(tmp_path / "evil")
    assert not marker.exists()


def test_sharded_safetensors_written_by_transformers_load(tmp_path, good, small_tokenizer):
    transformers = pytest.importorskip("transformers")
    model, directory = good
    hf = transformers.BertModel.from_pretrained(directory)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    shutil.copy(directory / "vocab.txt", tmp_path / "sharded")
    loaded = bertkit.load(tmp_path / "sharded")
    assert loaded.load_report["missing"] == [] and loaded.load_report["unexpected"] == []
    assert_same_model(model, loaded, small_tokenizer)


# ---- bad checkpoints --------------------------------------------------------------------------------
def _rewrite_weights(directory, edit):
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")


def _set_bytes(directory, fn):
    path = directory / "model.safetensors"
    path.write_bytes(fn(path.read_bytes()))


def _edit_config(directory, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


BAD = {
    # name: (how to break a good checkpoint, fragments the one-line message must contain)
    "no-config": (lambda d: os.remove(d / "config.json"), ["not a checkpoint directory", "config.json is missing"]),
    "no-weights": (lambda d: os.remove(d / "model.safetensors"), ["no weights found", "model.safetensors"]),
    "config-not-json": (lambda d: (d / "config.json").write_text("{'oops'"), ["config.json: cannot read config"]),
    "config-not-bert": (lambda d: _edit_config(d, model_type="gpt2"), ["model_type is 'gpt2'"]),
    "config-bad-heads": (lambda d: _edit_config(d, num_attention_heads=3), ["hidden_size 128 is not divisible by num_attention_heads 3"]),
    "vocab-size-mismatch": (
        lambda d: (d / "vocab.txt").write_text((d / "vocab.txt").read_text() + "extra1\nextra2\n"),
        ["vocab.txt: has 1002 tokens but config.json says vocab_size 1000"],
    ),
    "wrong-shape": (
        lambda d: _rewrite_weights(d, lambda t: t.update({"encoder.layer.1.intermediate.dense.weight": torch.zeros(512, 64)})),
        ["tensor encoder.layer.1.intermediate.dense.weight has shape (512, 64), the config needs (512, 128)"],
    ),
    "missing-tensor": (
        lambda d: _rewrite_weights(d, lambda t: t.pop("encoder.layer.1.attention.self.key.bias")),
        ["encoder tensor(s) missing", "encoder.layer.1.attention.self.key.bias"],
    ),
    "truncated": (lambda d: _set_bytes(d, lambda b: b[: len(b) // 2]), ["model.safetensors: cannot read weights", "truncated or corrupt"]),
    "truncated-by-4-bytes": (lambda d: _set_bytes(d, lambda b: b[:-4]), ["model.safetensors: cannot read weights"]),
    "empty": (lambda d: _set_bytes(d, lambda b: b""), ["model.safetensors: cannot read weights"]),
    "header-garbage": (lambda d: _set_bytes(d, lambda b: b[:8] + b"\xff\xfe[" + b[11:]), ["model.safetensors: cannot read weights"]),
    "random-bytes": (lambda d: _set_bytes(d, lambda b: os.urandom(len(b))), ["model.safetensors: cannot read weights"]),
}


@pytest.fixture
def broken(tmp_path, good, request):
    _, directory = good
    target = tmp_path / request.param
    shutil.copytree(directory, target)
    BAD[request.param][0](target)
    return target, BAD[request.param][1]


@pytest.mark.parametrize("broken", list(BAD), indirect=True)
def test_bad_checkpoint_is_a_clear_error(broken):
    directory, fragments = broken
    with pytest.raises(bertkit.BertkitError) as e:
        bertkit.load(directory)
    msg = str(e.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg
    # The CLI says the same on one line, exit status 2, no traceback.
    assert_cli_error(run_cli("info", directory), *fragments)


def test_a_file_is_not_a_model(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(bertkit.BertkitError, match="is a file; a model is a checkpoint directory"):
        bertkit.load(f)
