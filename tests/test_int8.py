"""bertkit.cpu.int8: which Linear layers the int8 recipe quantizes, the int8 Linear's arithmetic, and
the fidelity it claims on real sentences (all-minilm-l6-v2, SST-2 dev)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn as nn

import bertkit
from bertkit.cpu.optimize import for_inference
from bertkit.cpu.int8 import Int8Linear, quantize_int8
from bertkit.errors import BertkitError
from bertkit.export.graph import ExportGraph
from conftest import tiny_checkpoint

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(40)]
BLOCK = re.compile(r"(^|\.)layers\.\d+\.(qkv|query|key|value|attn_out|ffn_in|ffn_out)$")


def linears(module: nn.Module) -> tuple[set[str], set[str]]:
    """(names of Int8Linear modules, names of nn.Linear modules)."""
    named = list(module.named_modules())
    return ({n for n, m in named if isinstance(m, Int8Linear)}, {n for n, m in named if isinstance(m, nn.Linear)})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    return {head: bertkit.load(tiny_checkpoint(root / head, VOCAB, head, randomize=True))
            for head in ("encoder", "classification", "token_classification")}


@pytest.mark.parametrize("head", ["encoder", "classification", "token_classification"])
def test_recipe_quantizes_the_block_linears_and_keeps_the_rest_fp32(tiny, head):
    model = tiny[head]
    before = linears(model)[1]
    quantized = quantize_int8(model)
    int8, fp32 = linears(quantized)
    block = {n for n in before if BLOCK.search(n)}
    assert len(block) == 4 * model.config.num_hidden_layers  # qkv, attn_out, ffn_in, ffn_out per layer
    assert int8 == block
    assert fp32 == before - block  # the pooler and the task heads stay fp32
    assert fp32 == {"encoder": {"pooler"}, "classification": {"bert.pooler", "classifier"},
                    "token_classification": {"classifier"}}[head]
    assert linears(model) == (set(), before)  # a copy: the model itself is untouched
    assert not quantized.training


def test_export_graph_gets_the_same_recipe(tiny):
    graph = ExportGraph(tiny["classification"], "classification")
    int8, fp32 = linears(quantize_int8(graph))  # what `export --format torch --quantize int8` runs
    n = tiny["classification"].config.num_hidden_layers
    assert int8 == {f"layers.{i}.{k}" for i in range(n) for k in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")}
    assert fp32 == {"pooler", "classifier"}


def test_keep_fp32_leaves_named_block_linears_in_float(tiny):
    int8, fp32 = linears(quantize_int8(tiny["encoder"], keep_fp32=("ffn_out", "layers.0.qkv")))
    assert {n for n in fp32 if BLOCK.search(n)} == {"layers.0.ffn_out", "layers.1.ffn_out", "layers.0.qkv"}
    assert "layers.1.qkv" in int8


def test_int8_linear_is_per_channel_weights_times_per_token_activations():
    torch.manual_seed(0)
    linear = nn.Linear(48, 20)
    x = torch.randn(2, 7, 48) * torch.linspace(0.1, 10, 7)[None, :, None]  # rows of very different ranges
    x[0, 3, 5] = 80.0  # an outlier token: only its own row's step grows
    layer = Int8Linear(linear)
    w = linear.weight.detach()
    w_scale = w.abs().amax(1) / 127
    w_q = torch.round(w / w_scale[:, None])
    assert torch.equal(layer.weight_int8.t().float(), w_q) and int(layer.weight_int8.abs().max()) == 127
    rows = x.reshape(-1, 48)
    row_max = rows.abs().amax(1, keepdim=True)
    x_q = torch.round(rows * (127 / row_max))  # the row's step is its max |x| / 127
    want = (x_q.double() @ w_q.double().t()) * (row_max.double() / 127) * w_scale.double() + linear.bias.double()
    with torch.inference_mode():
        got = layer(x)
    assert got.shape == (2, 7, 20) and got.dtype == torch.float32
    assert torch.allclose(got.reshape(-1, 20).double(), want, rtol=1e-5, atol=1e-5)
    exact = linear(x).detach()
    assert (got - exact).abs().max() < 0.02 * exact.abs().max()  # and it is close to the float layer


def test_quantized_tiny_model_follows_fp32(tiny):
    model = tiny["encoder"]
    quantized = quantize_int8(model)
    ids = torch.randint(5, len(VOCAB), (3, 12))
    lengths = torch.tensor([12, 7, 3])
    with torch.inference_mode():
        want, _ = model(ids, valid_lengths=lengths)
        got, _ = quantized(ids, valid_lengths=lengths)
    real = torch.arange(12)[None, :] < lengths[:, None]
    cos = torch.nn.functional.cosine_similarity(got[real], want[real], dim=-1)
    assert float(cos.min()) > 0.99 and float((got - want).abs().max()) > 0  # int8, and close
    assert float(got[~real].abs().max()) == 0.0  # padding stays zero


def mean_vectors(model, tokenizer, sentences: list[str]) -> np.ndarray:
    """Attention-mask mean of the last hidden states (all-minilm-l6-v2's sentence-transformers recipe
    without its L2 normalisation, which a cosine ignores), batches of 32 sorted by length."""
    encodings = tokenizer.encode_batch(sentences, max_len=256)
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
    out = np.zeros((len(sentences), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            batch = tokenizer.pad([encodings[i] for i in idx])
            seq, _ = model(batch.input_ids, batch.segment_ids, batch.valid_lengths)
            mask = (torch.arange(seq.shape[1])[None, :] < batch.valid_lengths[:, None]).float()
            out[idx] = ((seq * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)).numpy()
    return out


def test_minilm_sentence_vectors_keep_the_claimed_fidelity(minilm, sst2_dev):
    """The docstring's claim, on 200 real SST-2 dev sentences: cosine of mean-pooled int8 vectors to
    fp32 >= 0.995 on average and >= 0.98 for the worst sentence (scripts/int8_fidelity.py measures
    0.9971 / 0.983 on 1872 sentences)."""
    sentences = sst2_dev[:200]
    want = mean_vectors(minilm, minilm.tokenizer, sentences)
    got = mean_vectors(quantize_int8(minilm), minilm.tokenizer, sentences)
    cos = (want * got).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.mean() >= 0.995 and cos.min() >= 0.98, (cos.mean(), cos.min())


@pytest.mark.parametrize("optimize", [True, False])
def test_onnx_recipe_keeps_ffn_out_and_embeddings_fp32(tiny, tmp_path, optimize):
    """The same layer choice for ONNX Runtime, less the feed-forward output: every other block Linear
    int8 (fused Attention included); embeddings, pooler and attention's products fp32."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from bertkit.export import onnx_format

    model = tiny["encoder"]
    cfg = model.config
    ids = torch.randint(5, len(VOCAB), (2, 9))
    sample = (ids, torch.zeros_like(ids), torch.ones_like(ids))
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx_format.write_onnx(ExportGraph(model, "encoder"), fp32, sample)
    if optimize:
        onnx_format.optimize_for_onnxruntime(fp32, cfg.num_attention_heads, cfg.hidden_size)
    onnx_format.quantize_int8(fp32, int8)
    nodes = [(n.op_type, n.name) for n in onnx.load(str(int8)).graph.node]
    ops = {op for op, _ in nodes}
    float_matmuls = {name for op, name in nodes if op == "MatMul"}
    n = cfg.num_hidden_layers
    assert {f"/layers.{i}/ffn_out/MatMul" for i in range(n)} <= float_matmuls
    assert not any(re.search(r"/(query|key|value|attn_out|ffn_in)/MatMul$", name) for name in float_matmuls)
    int8_matmuls = {name for op, name in nodes if op == "MatMulInteger"}
    assert "QEmbedLayerNormalization" not in ops and "DequantizeLinear" not in ops  # embedding tables fp32
    assert any(name.startswith("/pooler/") for name in float_matmuls)  # the quantizer's MatMul for the pooler's Gemm
    float_matmuls = {name for name in float_matmuls if name.startswith("/layers.")}
    if optimize:
        assert float_matmuls == {f"/layers.{i}/ffn_out/MatMul" for i in range(n)}
        assert sum(op == "QAttention" for op, _ in nodes) == n and "Attention" not in ops
        assert int8_matmuls == {f"/layers.{i}/{k}/MatMul_quant" for i in range(n) for k in ("attn_out", "ffn_in")}
    else:
        assert len(float_matmuls) == 3 * n  # ffn_out, and attention's scores and context products
        assert int8_matmuls == {f"/layers.{i}/{k}/MatMul_quant" for i in range(n)
                                for k in ("query", "key", "value", "attn_out", "ffn_in")}
    feed = {"input_ids": sample[0].numpy(), "token_type_ids": sample[1].numpy(), "attention_mask": sample[2].numpy()}
    want, got = (onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["last_hidden_state"], feed)[0]
                 for p in (fp32, int8))
    cos = (want * got).sum(-1) / (np.linalg.norm(want, axis=-1) * np.linalg.norm(got, axis=-1))
    assert cos.min() > 0.99 and np.abs(want - got).max() > 0


def test_embed_and_predict_take_quantize_int8(tmp_path):
    from conftest import run_cli

    directory = tiny_checkpoint(tmp_path / "encoder", VOCAB, "encoder", randomize=True)
    words = [w for w in VOCAB if not w.startswith("[")]
    sentences = [" ".join(words[i:i + 5]) for i in range(0, 20, 4)]
    vectors = {}
    for name, extra in (("fp32", []), ("int8", ["--quantize", "int8"])):
        out = tmp_path / f"{name}.npy"
        r = run_cli("embed", "--model", directory, "--sentences", *sentences, "--pooling", "mean", "--format", "npy",
                    "--out", out, *extra)
        assert r.returncode == 0, r.stderr
        vectors[name] = np.load(out)
    a, b = vectors["fp32"], vectors["int8"]
    assert a.shape == b.shape and not np.array_equal(a, b)  # int8 ran
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99
    classifier = tiny_checkpoint(tmp_path / "classifier", VOCAB, "classification", randomize=True)
    r = run_cli("predict", "--model", classifier, "w1 w2 w3", "--quantize", "int8")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    with pytest.raises(BertkitError, match="--quantize int8 runs bertkit's int8 CPU kernels: use it on the CPU in fp32, not on cuda in fp32"):
        for_inference(bertkit.load(directory), torch.device("cuda"), "fp32", "int8")
