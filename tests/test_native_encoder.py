"""bertkit.native_encoder: the compiled kernels build on this machine, equal the layer-by-layer path over
head sizes, lengths (whole and partial vectors of keys) and activations, check their inputs, and step
aside to TorchScript where they cannot run."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import bertkit
from bertkit.native_encoder import kernels_apply, load_kernels
from bertkit.packed_linear import mkl_packing_available
from bertkit.scripted_encoder import use_scripted_encoder
from conftest import randomize_

pytestmark = pytest.mark.skipif(not mkl_packing_available(), reason="PyTorch built without MKL")


@pytest.fixture(scope="module")
def kernels():
    compiled = load_kernels()
    if compiled is None:
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip("no C++ compiler on this machine: the TorchScript path runs instead")
        pytest.fail("a C++ compiler is present but the native kernels did not build (see the warning)")
    return compiled


def model_with(hidden, heads, act="gelu", seed=0, cls=bertkit.BertModel, **kwargs):
    cfg = bertkit.BertConfig(vocab_size=300, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                             intermediate_size=2 * hidden, hidden_act=act, max_position_embeddings=160)
    # larger weights than an initialised model: peaked attention and GELU inputs far from zero
    return randomize_(cls(cfg, **kwargs), seed=seed, std=0.15).eval()


def run_native(model, ids, segs, cls_only=False):
    """(native outputs, layer-by-layer outputs); asserts the compiled function ran."""
    fast = use_scripted_encoder(copy.deepcopy(model))
    bert = fast if isinstance(fast, bertkit.BertModel) else fast.bert
    with torch.inference_mode():
        if cls_only:
            got, want = fast.pooled_output(ids, segs), model.pooled_output(ids, segs)
        else:
            got, want = fast(ids, segs), model(ids, segs)
    assert bert.scripted_encoder.runs_native
    return got, want


def inputs(batch, seqlen, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 300, (batch, seqlen), generator=g)
    segs = (torch.arange(seqlen) >= seqlen // 2).long().expand(batch, seqlen).contiguous()
    return ids, segs


def errors_against_float64(model, ids, segs):
    """max |native - float64| and max |layer-by-layer fp32 - float64| of the hidden states and pooled
    output: the kernels must be as accurate as the fp32 path they replace (larger weights, longer
    inputs and wider layers all grow both)."""
    (seq, pooled), (ref_seq, ref_pooled) = run_native(model, ids, segs)
    with torch.inference_mode():
        exact_seq, exact_pooled = copy.deepcopy(model).double()(ids, segs)
    err = lambda a, b: max(float((a - exact_seq).abs().max()), float((b - exact_pooled).abs().max()))  # noqa: E731
    assert seq.shape == ref_seq.shape
    return err(seq, pooled), err(ref_seq, ref_pooled)


# head sizes 16..128: 1 to 8 vectors of 16 floats, blocks of 4, 2 or 1 query rows (which depends on
# the build's vector width too); lengths cover one key, whole vectors of 16 keys, a partial last
# vector, and several vectors
@pytest.mark.parametrize("hidden,heads", [(64, 4), (96, 3), (144, 3), (128, 2), (256, 2)])
@pytest.mark.parametrize("batch,seqlen", [(1, 1), (1, 16), (1, 25), (3, 17), (2, 70)])
def test_equals_the_layer_by_layer_path(kernels, hidden, heads, batch, seqlen):
    native_error, fp32_error = errors_against_float64(model_with(hidden, heads), *inputs(batch, seqlen))
    assert native_error < 1.5 * fp32_error + 2e-6 and native_error < 5e-5


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_every_activation_and_the_cls_only_rows(kernels, act):
    model = model_with(128, 4, act=act)
    ids, segs = inputs(3, 21)
    native_error, fp32_error = errors_against_float64(model, ids, segs)
    assert native_error < 1.5 * fp32_error + 2e-6 and native_error < 5e-5
    alone, ref_alone = run_native(model, ids, segs, cls_only=True)
    assert (alone - ref_alone).abs().max() < 2e-5


def test_task_heads_and_a_model_without_pooler(kernels):
    ids, segs = inputs(2, 19)
    logits, ref = run_native(model_with(128, 4, cls=bertkit.BertForSequenceClassification, num_labels=3), ids, segs)
    assert (logits - ref).abs().max() < 2e-5
    (seq, pooled), (ref_seq, _) = run_native(model_with(128, 4, add_pooler=False), ids, segs)
    assert pooled is None and (seq - ref_seq).abs().max() < 2e-5


def test_real_checkpoint_on_real_sentences(kernels, minilm, sst2_dev):
    for text in sst2_dev[:8]:
        (seq, pooled), (ref_seq, ref_pooled) = run_native(minilm, minilm.tokenizer([text]).input_ids, None)
        assert (seq - ref_seq).abs().max() < 1e-5 and (pooled - ref_pooled).abs().max() < 1e-5


def test_bad_ids_are_an_index_error_not_a_crash(kernels):
    model = use_scripted_encoder(model_with(64, 4))
    ids, segs = inputs(1, 9)
    with torch.inference_mode():
        model(ids, segs)
        assert model.scripted_encoder.runs_native
        with pytest.raises(IndexError, match="token id 300 is out of range"):
            model(torch.full((1, 5), 300), None)
        with pytest.raises(IndexError, match="segment id 2 is out of range"):
            model(ids, torch.full_like(ids, 2))
        with pytest.raises(IndexError, match="token id -1"):
            model(torch.full((1, 5), -1), None)


def test_releases_the_gil_while_it_runs(kernels):
    """A server's event loop keeps running while a request is encoded on another thread."""
    model = use_scripted_encoder(model_with(256, 4))
    ids, segs = inputs(1, 150)
    ticks, done = [], threading.Event()

    def encode_for_a_while():
        with torch.inference_mode():
            for _ in range(40):
                model(ids, segs)
        done.set()

    with torch.inference_mode():
        model(ids, segs)
    worker = threading.Thread(target=encode_for_a_while)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)  # with the GIL held across calls, this thread would wait a whole second
    try:
        worker.start()
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert model.scripted_encoder.runs_native and len(ticks) > 5


def test_steps_aside_to_torchscript(kernels):
    ids, segs = inputs(1, 9)
    odd = model_with(72, 3)  # head size 24: not a whole number of vectors
    assert not kernels_apply(odd.config)
    scripted = use_scripted_encoder(odd)
    with torch.inference_mode():
        scripted(ids, segs)
    assert scripted.scripted_encoder._script is not None and not scripted.scripted_encoder.runs_native
    asked = use_scripted_encoder(model_with(64, 4), native=False)
    with torch.inference_mode():
        asked(ids, segs)
    assert asked.scripted_encoder._script is not None and not asked.scripted_encoder.runs_native


def test_turned_off_or_unbuildable_falls_back_with_one_warning(tmp_path):
    """BERTKIT_NATIVE=0, and a machine whose compiler fails: a warning naming why, then TorchScript."""
    script = (
        "import warnings, torch, bertkit\n"
        "from bertkit.scripted_encoder import use_scripted_encoder\n"
        "cfg = bertkit.BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    m = use_scripted_encoder(bertkit.BertModel(cfg).eval())\n"
        "    with torch.inference_mode():\n"
        "        m(torch.ones(1, 4, dtype=torch.long)); m(torch.ones(1, 5, dtype=torch.long))\n"
        "print([str(w.message) for w in caught if 'native' in str(w.message)])\n"
        "print(m.scripted_encoder._script is not None, m.scripted_encoder.runs_native)\n")
    for env, reason in [({"BERTKIT_NATIVE": "0"}, "BERTKIT_NATIVE=0"),
                        ({"CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}, "")]:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env={**os.environ, **env}, cwd=Path(__file__).parent)
        assert out.returncode == 0, out.stderr
        warned, state = out.stdout.strip().splitlines()
        assert warned.count("native encoder kernels unavailable") == 1 and reason in warned
        assert state == "True False"
