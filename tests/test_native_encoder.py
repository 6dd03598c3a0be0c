"""bertkit/cpu/native: the compiled encoder kernels build on this machine, equal the layer-by-layer path
over head sizes, widths (whole and half GEMM panels), row counts (every register block size), lengths
(whole and partial vectors of keys), padded batches and activations, check their inputs, step aside
wherever they do not apply, follow every kind of weight change, and where they cannot be built
or do not take the model's shapes `optimize_for_cpu` attaches none and the layer-by-layer path runs."""

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
from bertkit.cpu import optimize_for_cpu
from bertkit.cpu.dispatch import kernel
from bertkit.cpu.int8 import Int8Linear, quantize_int8
from bertkit.cpu.native.encoder import kernels_apply, load_kernels
from bertkit.cpu.optimize import for_inference
from conftest import randomize_


@pytest.fixture(scope="module")
def kernels():
    compiled = load_kernels()
    if compiled is None:
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip("no C++ compiler on this machine: the layer-by-layer path runs instead")
        pytest.fail("a C++ compiler is present but the native kernels did not build (see the warning)")
    return compiled


def model_with(hidden, heads, act="gelu", seed=0, cls=bertkit.BertModel, **kwargs):
    cfg = bertkit.BertConfig(vocab_size=300, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                             intermediate_size=2 * hidden, hidden_act=act, max_position_embeddings=160)
    # larger weights than an initialised model: peaked attention and GELU inputs far from zero
    return randomize_(cls(cfg, **kwargs), seed=seed, std=0.15).eval()


def tiny(cls=bertkit.BertModel, seed=0, pooler=True, **overrides):
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=200, **overrides)
    return randomize_(cls(cfg) if pooler else cls(cfg, add_pooler=False), seed=seed).eval()


def native(model):
    """`model` itself with the native encoder only (no packed layers: the rest stays the plain path)."""
    optimize_for_cpu(model, packed_rows=0, native=True)
    bert = model if isinstance(model, bertkit.BertModel) else model.bert
    assert bert.cpu_encoder is not None
    return model


def run_native(model, ids, segs, cls_only=False, lengths=None):
    """(native outputs, layer-by-layer outputs); asserts the compiled function ran."""
    fast = native(copy.deepcopy(model))
    bert = fast if isinstance(fast, bertkit.BertModel) else fast.bert
    with torch.inference_mode():
        if cls_only:
            got, want = fast.pooled_output(ids, segs, lengths), model.pooled_output(ids, segs, lengths)
        else:
            got, want = fast(ids, segs, lengths), model(ids, segs, lengths)
    assert bert.cpu_encoder.ready
    return got, want


def inputs(batch, seqlen, seed=0, vocab=300):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seqlen), generator=g)
    segs = (torch.arange(seqlen) >= seqlen // 2).long().expand(batch, seqlen).contiguous()
    return ids, segs


def errors_against_float64(model, ids, segs, lengths=None):
    """max |native - float64| and max |layer-by-layer fp32 - float64| of the hidden states and pooled
    output: the kernels must be as accurate as the fp32 path they replace (larger weights, longer
    inputs and wider layers all grow both)."""
    (seq, pooled), (ref_seq, ref_pooled) = run_native(model, ids, segs, lengths=lengths)
    with torch.inference_mode():
        exact_seq, exact_pooled = copy.deepcopy(model).double()(ids, segs, lengths)
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


@pytest.mark.parametrize("hidden,heads", [(64, 4), (144, 3)])
@pytest.mark.parametrize("lengths", [[1, 70, 33], [17, 16, 2, 9, 1], [40] * 6])
def test_padded_batches_skip_the_padding(kernels, hidden, heads, lengths):
    """Sentences of other lengths in one batch: each attends to its own real tokens only, and the
    padded positions of the output are zero, as on the layer-by-layer path."""
    ids, segs = inputs(len(lengths), max(lengths) + 3)  # every row padded, some by many positions
    lengths = torch.tensor(lengths)
    model = model_with(hidden, heads)
    native_error, fp32_error = errors_against_float64(model, ids, segs, lengths)
    assert native_error < 1.5 * fp32_error + 2e-6 and native_error < 5e-5
    (seq, _), _ = run_native(model, ids, segs, lengths=lengths)
    padded = torch.arange(ids.shape[1])[None, :] >= lengths[:, None]
    assert seq[padded].abs().max() == 0
    alone, ref_alone = run_native(model, ids, segs, cls_only=True, lengths=lengths)
    assert (alone - ref_alone).abs().max() < 2e-5


@pytest.mark.parametrize("head_size", [16, 32, 48, 64, 128])
@pytest.mark.parametrize("threads", [1, 2])
def test_attention_alone_equals_softmax_qk_v_per_sequence(kernels, head_size, threads):
    """The attention kernel on packed q|k|v rows: every sequence sees only its own keys, over lengths that
    end inside and on the edge of a chunk of keys, span several chunks and give every row-block size,
    and uneven enough that the per-thread split by cost puts the long ones in one part."""
    heads, lengths = 3, [1, 2, 13, 16, 31, 32, 33, 97, 5, 200, 1, 64]
    g = torch.Generator().manual_seed(head_size)
    qkv = torch.randn(sum(lengths), 3 * heads * head_size, generator=g) * 0.5
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernels.attention(qkv, lengths, heads)
    finally:
        torch.set_num_threads(before)
    start = 0
    for n in lengths:
        q, k, v = qkv[start:start + n].double().view(n, 3, heads, head_size).unbind(1)
        want = torch.einsum("hij,jhd->ihd", torch.einsum("ihd,jhd->hij", q, k).softmax(-1), v).reshape(n, -1)
        assert (got[start:start + n].double() - want).abs().max() < 2e-5, n
        start += n
    with pytest.raises(RuntimeError, match="add up"):
        kernels.attention(qkv, lengths[:-1], heads)
    with pytest.raises(RuntimeError, match="not at least 1"):
        kernels.attention(qkv, [0] + lengths, heads)


@pytest.mark.parametrize("hidden,heads", [(64, 4), (144, 3)])
def test_bf16_matrix_multiplies_are_as_accurate_as_autocast(kernels, hidden, heads):
    """`--precision bf16` on a CPU with AVX512_BF16: the kernels' bf16 products (float32 sums, the rest
    float32) are at least as close to float32 as autocast's layer-by-layer path, padded batch included."""
    if not kernels.bf16_supported():
        pytest.skip("this CPU has no AVX512_BF16: bf16 runs autocast's layer-by-layer path")
    model = model_with(hidden, heads)
    fast = native(copy.deepcopy(model))
    ids, segs = inputs(3, 40)
    lengths = torch.tensor([40, 23, 1])
    with torch.inference_mode():
        exact, exact_pooled = model(ids, segs, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert kernel("encoder", ids, fast.cpu_encoder, lengths=lengths.tolist()) == "native-bf16"
            got, pooled = fast(ids, segs, lengths)
            ref, ref_pooled = model(ids, segs, lengths)
    assert got.dtype == torch.float32 and fast.cpu_encoder.ready
    err, ref_err = (got - exact).abs().max(), (ref.float() - exact).abs().max()
    assert 0 < err < 1.2 * ref_err and err < 0.1
    assert (pooled - exact_pooled).abs().max() < 1.2 * (ref_pooled.float() - exact_pooled).abs().max()
    assert got[2, 1:].abs().max() == 0  # padding stays zero


def test_bf16_packing_rounds_like_autocast(kernels):
    """The packed bf16 panels hold exactly the weights rounded to bf16, in the pair order the
    dot-product instruction reads; a last half panel (48 outputs in panels of 32 on AVX-512) is
    zero-filled."""
    w, b = torch.randn(48, 6), torch.randn(48)
    panels, bias = kernels.pack_linear_bf16(w, b)
    nr = panels.shape[2]  # two vectors of outputs: 32 with AVX-512, 16 with AVX2
    assert panels.shape == (-(-48 // nr), 3, nr, 2) and panels.dtype == torch.bfloat16 and bias.shape == (panels.shape[0] * nr,)
    wb = w.to(torch.bfloat16)
    for n in range(48):
        for k in range(6):
            assert panels[n // nr, k // 2, n % nr, k % 2] == wb[n, k]
    assert (bias[:48] == b).all() and bias[48:].abs().sum() == 0
    if 48 % nr:
        assert panels[-1, :, 48 % nr:].abs().max() == 0


@pytest.mark.parametrize("hidden,heads", [(64, 4), (144, 3)])
def test_int8_matrix_multiplies_follow_the_int8_recipe(kernels, hidden, heads):
    """`--quantize int8` on a CPU with AVX512_VNNI: the kernels run cpu/int8.py's recipe (the same int8
    weights, int8 activations per row) and land as close to float32 as its layer-by-layer path."""
    if not kernels.int8_supported():
        pytest.skip("this CPU has no AVX512_VNNI: int8 runs the layer-by-layer path")
    model = model_with(hidden, heads)
    ids, segs = inputs(3, 40)
    lengths = torch.tensor([40, 23, 1])
    layered = quantize_int8(model)
    fast = for_inference(model, torch.device("cpu"), "fp32", "int8")
    with torch.inference_mode():
        assert kernel("encoder", ids, fast.cpu_encoder, lengths=lengths.tolist()) == "native-int8"
        exact, exact_pooled = model(ids, segs, lengths)
        got, pooled = fast(ids, segs, lengths)
        ref, ref_pooled = layered(ids, segs, lengths)
    assert fast.cpu_encoder.ready
    real = torch.arange(40)[None, :] < lengths[:, None]
    err, ref_err = (got - exact)[real].abs().mean(), (ref - exact)[real].abs().mean()
    assert 0 < err < 1.2 * ref_err and err < 0.05
    assert (pooled - exact_pooled).abs().mean() < 1.2 * (ref_pooled - exact_pooled).abs().mean()
    assert got[2, 1:].abs().max() == 0


def test_int8_packing_keeps_the_recipes_numbers(kernels):
    """The int8 panels hold Int8Linear's weights in the quad order the VNNI instruction reads, with
    128 * each channel's weight sum (the unsigned-input correction), its bias and output scale."""
    layer = Int8Linear(torch.nn.Linear(8, 48))
    panels, factors, sums = kernels.pack_linear_int8(layer.weight_int8, layer.output_scale, layer.bias)
    nr = panels.shape[2]
    assert panels.shape == (-(-48 // nr), 2, nr, 4) and panels.dtype == torch.int8 and factors.shape == (2, panels.shape[0] * nr)
    for n in range(48):
        for k in range(8):
            assert panels[n // nr, k // 4, n % nr, k % 4] == layer.weight_int8[k, n]
    assert (sums[:48] == 128 * layer.weight_int8.int().sum(0)).all() and sums[48:].abs().sum() == 0
    assert (factors[0, :48] == layer.bias).all() and (factors[1, :48] == layer.output_scale).all()
    if 48 % nr:
        assert panels[-1, :, 48 % nr:].abs().max() == 0


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
    (start, end), (ref_start, ref_end) = run_native(model_with(128, 4, cls=bertkit.BertForQuestionAnswering), ids, segs)
    assert (start - ref_start).abs().max() < 2e-5 and (end - ref_end).abs().max() < 2e-5
    (seq, pooled), (ref_seq, _) = run_native(model_with(128, 4, add_pooler=False), ids, segs)
    assert pooled is None and (seq - ref_seq).abs().max() < 2e-5


@pytest.mark.filterwarnings("ignore::bertkit.tokenizer.TruncationWarning")  # the joined texts: cut at 512 on purpose
def test_real_checkpoint_on_real_sentences(kernels, minilm, sst2_dev):
    """What `bertkit serve` runs against the plain model: single sentences, a padded batch of 32, and
    texts of 1 to 512 tokens (SST-2 sentences joined up to the model's length)."""
    served = optimize_for_cpu(copy.deepcopy(minilm), native=True)
    joined = [" ".join(sst2_dev[i:i + n]) for i, n in [(0, 3), (10, 9), (20, 25), (50, 40)]]
    batches = [[text] for text in sst2_dev[:8]] + [sst2_dev[100:132]] + [[text] for text in joined]
    batches += [["a"], [""], joined]
    seen = set()
    with torch.inference_mode():
        for texts in batches:
            batch = minilm.tokenizer(texts, max_len=512)
            seen.update(batch.valid_lengths.tolist())
            (seq, pooled), (ref_seq, ref_pooled) = served(batch), minilm(batch)
            assert (seq - ref_seq).abs().max() < 1e-5 and (pooled - ref_pooled).abs().max() < 1e-5, texts
    assert served.cpu_encoder.ready and min(seen) <= 3 and max(seen) == 512


@pytest.mark.filterwarnings("ignore::bertkit.tokenizer.TruncationWarning")
@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_real_checkpoint_bf16_and_int8_sentence_vectors(kernels, minilm, sst2_dev, mode):
    """Mean-pooled sentence vectors of real texts of 1 to 512 tokens (the issue's fidelity measure):
    bf16 and int8 through the kernels against float32, cosine mean >= 0.995 and worst >= 0.98 (bf16
    much closer), and no worse than the layer-by-layer path in the same mode."""
    if not (kernels.bf16_supported() if mode == "bf16" else kernels.int8_supported()):
        pytest.skip(f"this CPU has no {'AVX512_BF16' if mode == 'bf16' else 'AVX512_VNNI'}")
    cpu = torch.device("cpu")
    fast = for_inference(copy.deepcopy(minilm), cpu, "fp32", "int8" if mode == "int8" else None)
    layered = quantize_int8(minilm) if mode == "int8" else minilm
    texts = sst2_dev[:40] + [" ".join(sst2_dev[i:i + n]) for i, n in [(0, 3), (10, 9), (50, 40)]] + ["a"]
    batch = minilm.tokenizer(texts, max_len=512)
    mask = (torch.arange(batch.input_ids.shape[1])[None, :] < batch.valid_lengths[:, None]).float()[..., None]
    pooled = lambda seq: (seq.float() * mask).sum(1) / mask.sum(1)  # noqa: E731
    with torch.inference_mode():
        exact = pooled(minilm(batch)[0])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            got, ref = pooled(fast(batch)[0]), pooled(layered(batch)[0])
    assert fast.cpu_encoder.ready
    cos, ref_cos = (torch.nn.functional.cosine_similarity(x, exact) for x in (got, ref))
    assert cos.mean() >= 0.995 and cos.min() >= 0.98
    assert cos.mean() >= ref_cos.mean() - 2e-4 and cos.min() >= ref_cos.min() - 2e-3
    if mode == "bf16":
        assert cos.min() > 0.9995


def test_stage_clock_counts_only_while_asked(kernels):
    """benchmarks/profile_ops.py's view inside the kernels: seconds per stage, only while profiling."""
    model = native(model_with(64, 4))
    ids, segs = inputs(2, 30)
    with torch.inference_mode():
        kernels.stage_seconds()
        model(ids, segs)
        assert sum(kernels.stage_seconds().values()) == 0
        kernels.set_profiling(True)
        try:
            model(ids, segs)
        finally:
            kernels.set_profiling(False)
        stages = kernels.stage_seconds()
    assert set(stages) == {"GEMM", "attention", "LayerNorm", "embedding", "other ops"}
    assert stages["GEMM"] > 0 and stages["attention"] > 0 and stages["LayerNorm"] > 0
    assert sum(kernels.stage_seconds().values()) == 0  # read once, then zero


def test_bad_ids_are_an_index_error_not_a_crash(kernels):
    model = native(model_with(64, 4))
    ids, segs = inputs(1, 9)
    with torch.inference_mode():
        model(ids, segs)
        assert model.cpu_encoder.ready
        with pytest.raises(IndexError, match="token id 300 is out of range"):
            model(torch.full((1, 5), 300), None)
        with pytest.raises(IndexError, match="segment id 2 is out of range"):
            model(ids, torch.full_like(ids, 2))
        with pytest.raises(IndexError, match="token id -1"):
            model(torch.full((1, 5), -1), None)


def test_releases_the_gil_while_it_runs(kernels):
    """A server's event loop keeps running while a request is encoded on another thread."""
    model = native(model_with(256, 4))
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
    assert model.cpu_encoder.ready and len(ticks) > 5


def test_steps_aside_where_it_does_not_apply(kernels):
    model = optimize_for_cpu(tiny(), max_tokens=64, native=True)
    enc = model.cpu_encoder
    ids, segs = inputs(2, 9, vocab=200)
    with torch.inference_mode():
        assert enc(ids, segs, attention_mask=torch.tensor([[1] * 9, [1] * 4 + [0] + [1] * 4])) is None  # a gap
        assert enc(ids, segs, valid_lengths=torch.tensor([9, 0])) is None  # an empty row
        assert enc(*inputs(8, 9, vocab=200)) is None  # 72 tokens > max_tokens
        assert enc(*inputs(8, 9, vocab=200), valid_lengths=torch.tensor([8] * 8)) is not None  # 64 real tokens
        assert enc(ids[None], segs[None]) is None  # not (B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: the kernels' own bf16 GEMMs where the CPU has them
            assert kernel("encoder", ids, enc, lengths=[9, 9]) == ("native-bf16" if kernels.bf16_supported() else "eager")
        with torch.autocast("cpu", dtype=torch.float16):  # fp16: autocast's ops
            assert kernel("encoder", ids, enc, lengths=[9, 9]) == "eager"
    assert enc(ids, segs) is None  # gradients on: training needs the differentiable path
    model.train()
    with torch.no_grad():
        assert enc(ids, segs) is None
    model.eval()
    with torch.no_grad():
        assert kernel("encoder", ids, enc, lengths=[9, 9]) == "native"
        assert enc(ids, segs) is not None and enc(ids, segs, valid_lengths=torch.tensor([9, 5])) is not None
        assert enc(ids, segs, attention_mask=torch.tensor([[1] * 9, [1] * 8 + [0]])) is not None
    # a mask with a gap through the model takes the layer-by-layer path
    mask = torch.tensor([[1] * 9, [0] + [1] * 8])
    with torch.inference_mode():
        seq, _ = model(ids, segs, attention_mask=mask)
        model.cpu_encoder = None
        ref, _ = model(ids, segs, attention_mask=mask)
    assert seq[1, 0].abs().max() == 0 and (seq - ref).abs().max() == 0


def test_follows_weight_changes(kernels):
    model = native(tiny(seed=0))
    other = tiny(seed=1)
    ids, segs = inputs(1, 12, vocab=200)
    with torch.inference_mode():
        before, _ = model(ids, segs)
    model.load_state_dict(other.state_dict())  # in place: every version counter moves
    with torch.inference_mode():
        after, _ = model(ids, segs)
        expected, _ = other(ids, segs)
    assert (after - expected).abs().max() < 1e-5 and (before - after).abs().max() > 1e-3

    # a fused optimizer step changes weights without moving version counters
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    model.train()
    model(ids, segs)[0].sum().backward()
    optimizer.step()
    model.eval()
    with torch.inference_mode():
        stepped, _ = model(ids, segs)
        model.cpu_encoder = None
        reference, _ = model(ids, segs)
    assert (stepped - reference).abs().max() < 1e-5 and (stepped - after).abs().max() > 1e-4


def test_follows_swapped_parameters_and_modules(kernels):
    model = native(tiny(seed=0))
    other = tiny(seed=2)
    ids, segs = inputs(1, 7, vocab=200)
    with torch.inference_mode():
        model(ids, segs)
    model.load_state_dict(other.state_dict(), assign=True)  # new Parameter objects, not copies
    with torch.inference_mode():
        got, _ = model(ids, segs)
        want, _ = other(ids, segs)
    assert (got - want).abs().max() < 1e-5
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.inference_mode():
        got, _ = quantized(ids, segs)
    assert not quantized.cpu_encoder.ready  # int8 layers keep their own path
    assert (got - want).abs().max() > 0


def test_deep_copy_gets_its_own_weights(kernels):
    model = native(tiny(seed=0))
    ids, segs = inputs(1, 6, vocab=200)
    with torch.inference_mode():
        model(ids, segs)
    twin = copy.deepcopy(model)
    assert twin.cpu_encoder.bert is twin
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    with torch.inference_mode():
        a, _ = model(ids, segs)
        b, _ = twin(ids, segs)
        twin.cpu_encoder = None
        b_ref, _ = twin(ids, segs)
    assert (a - b).abs().max() > 1e-3 and (b - b_ref).abs().max() < 1e-5


@pytest.mark.parametrize("with_kernels", [False, True])
def test_pooled_output_alone_equals_the_full_forward(with_kernels):
    """BertModel.pooled_output runs the last layer's per-token work for [CLS] only: same pooled vectors."""
    model = tiny(seed=3)
    if with_kernels:
        optimize_for_cpu(model, native=True)
    # one sentence, an unpadded batch (strided [CLS] rows in the kernels), a padded batch
    for ids, segs, lengths in [(*inputs(1, 10, vocab=200), None), (*inputs(3, 12, vocab=200), None),
                               (*inputs(3, 12, vocab=200), torch.tensor([12, 7, 3]))]:
        with torch.inference_mode():
            alone = model.pooled_output(ids, segs, lengths)
            _, full = model(ids, segs, lengths)
        assert alone.shape == full.shape and (alone - full).abs().max() < 1e-5


def test_classifier_gradients_are_unchanged_by_the_cls_only_last_layer():
    """Training through pooled_output: the same loss and gradients as through the full forward."""
    torch.manual_seed(0)
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=200, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    clf = randomize_(bertkit.BertForSequenceClassification(cfg, num_labels=3)).train()
    ids, segs = inputs(4, 10, vocab=200)
    lengths, labels = torch.tensor([10, 8, 5, 2]), torch.tensor([0, 2, 1, 2])

    def loss_and_grads(forward):
        clf.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(), labels)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in clf.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(lambda: clf(ids, segs, lengths))
    ref_loss, ref_grads = loss_and_grads(lambda: clf.classifier(clf.bert(ids, segs, lengths)[1]))
    assert abs(loss - ref_loss) < 1e-6 and grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert (g - ref_grads[name]).abs().max() < 1e-5, name


def test_pooled_output_without_a_pooler_is_a_clear_error():
    model = optimize_for_cpu(tiny(pooler=False), native=True)
    with torch.inference_mode(), pytest.raises(ValueError, match="no pooler"):
        model.pooled_output(*inputs(1, 5, vocab=200))


def test_none_attached_where_the_kernels_do_not_apply(kernels):
    ids, segs = inputs(1, 9)
    odd = model_with(72, 3)  # head size 24: not a whole number of vectors
    assert not kernels_apply(odd.config)
    served = optimize_for_cpu(copy.deepcopy(odd), native=True)
    assert served.cpu_encoder is None  # the layer-by-layer path, with packed layers
    with torch.inference_mode():
        assert (served(ids, segs)[0] - odd(ids, segs)[0]).abs().max() < 1e-5
    asked = optimize_for_cpu(model_with(64, 4), native=False)
    assert asked.cpu_encoder is None
    again = optimize_for_cpu(native(model_with(64, 4)), native=False)  # the latest settings win
    assert again.cpu_encoder is None


def test_turned_off_or_unbuildable_falls_back_with_one_warning(tmp_path):
    """BERTKIT_NATIVE=0, and a machine whose compiler fails: a warning naming why, no native encoder,
    and the model still runs (the layer-by-layer path)."""
    script = (
        "import warnings, torch, bertkit\n"
        "from bertkit.cpu import optimize_for_cpu\n"
        "cfg = bertkit.BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    m = optimize_for_cpu(bertkit.BertModel(cfg).eval(), native=True)\n"
        "    with torch.inference_mode():\n"
        "        a = m(torch.ones(1, 4, dtype=torch.long)); m(torch.ones(1, 5, dtype=torch.long))\n"
        "print([str(w.message) for w in caught if 'native' in str(w.message)])\n"
        "print(m.cpu_encoder is None, tuple(a[0].shape))\n")
    for env, reason in [({"BERTKIT_NATIVE": "0"}, "BERTKIT_NATIVE=0"),
                        ({"CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}, "")]:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env={**os.environ, **env}, cwd=Path(__file__).parent)
        assert out.returncode == 0, out.stderr
        warned, state = out.stdout.strip().splitlines()
        assert warned.count("native encoder kernels unavailable") == 1 and reason in warned
        assert state == "True (1, 4, 64)"
