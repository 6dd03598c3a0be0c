"""--device and --precision for the inference commands (predict, embed, export, serve) and the
`precision=` keyword of the Python API (predict, answer, BertEmbedding).

Per command: a device this machine lacks (`--device cuda` on a CPU-only torch) and a precision the
CPU cannot run (`--precision fp16`) are one-line errors that write nothing; `--precision bf16` (on a
CPU with native bf16) stays within bf16's reach of fp32; `--device cpu --precision fp32` gives
exactly the default output. And serve's autocast is entered on the batcher thread that runs the model.

bf16's tolerance: bf16 keeps 8 significant bits (a relative rounding error of 2^-9, 0.2%), and a
BERT forward rounds at every matrix multiply, so hidden states end up ~0.5-1% of their scale from
fp32's (measured: all-minilm-l6-v2 token vectors 0.025 at a scale of 6, mean-pooled 0.006 at 1.07).
The checks allow 2% of the fp32 output's largest magnitude, cosine similarity >= 0.999, and
probabilities within 0.01; fp32 itself differs from fp32 by ~1e-6.
"""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
import torch

import bertkit
from bertkit.device import native_bf16_cpu
from bertkit.export import export
from conftest import assert_cli_error, run_cli
from test_export import head_checkpoint

COMMANDS = ("predict", "embed", "export", "serve")
needs_bf16 = pytest.mark.skipif(not native_bf16_cpu(), reason="this CPU has no AVX512_BF16/AMX: --precision bf16 is refused here")


def close_to_fp32(got: np.ndarray, ref: np.ndarray) -> None:
    """bf16's reach of fp32 (module docstring): max |diff| <= 2% of fp32's scale, cosine >= 0.999 per row."""
    got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    a, b = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    assert cos.min() >= 0.999


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("device-ckpt")
    return {head: head_checkpoint(root, head, minilm.tokenizer, seed=5)
            for head in ("encoder", "classification", "token_classification", "question_answering")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sst2_dev):
    root = tmp_path_factory.mktemp("device-inputs")
    tsv, txt = root / "in.tsv", root / "in.txt"
    tsv.write_text("sentence\n" + "\n".join(sst2_dev[:40]) + "\n", encoding="utf-8")
    txt.write_text("\n".join(sst2_dev[:40]) + "\n", encoding="utf-8")
    return {"tsv": tsv, "txt": txt, "texts": sst2_dev[:40]}


def command_line(command: str, ckpts, inputs, out, *flags: str) -> list:
    """The command on small inputs, writing to `out` (serve: a port nobody listens on; it writes nothing)."""
    if command == "predict":
        return ["predict", "--model", ckpts["classification"], "--file", inputs["tsv"], "--out", out, *flags]
    if command == "embed":
        return ["embed", "--model", ckpts["encoder"], "--file", inputs["txt"], "--pooling", "mean", "--format", "npy",
                "--out", out, *flags]
    if command == "export":
        return ["export", "--model", ckpts["classification"], "--format", "onnx", "--out", out, "--seq-length", "64", *flags]
    from test_serve import free_port

    return ["serve", "--model", ckpts["classification"], "--port", str(free_port()), *flags]


# ---- errors: one line, exit 2, nothing written ---------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flags, fragment", [
    pytest.param(("--device", "cuda"), "--device cuda", id="cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a GPU: --device cuda runs")),
    pytest.param(("--device", "cpu", "--precision", "fp16"), "--precision fp16", id="fp16"),
    pytest.param(("--device", "cpu", "--dtype", "float16"), "--precision float16", id="dtype-float16"),
])
def test_a_device_or_precision_this_machine_lacks_is_a_one_line_error(ckpts, inputs, tmp_path, command, flags, fragment):
    out = tmp_path / ("out.npy" if command == "embed" else "out")
    message = assert_cli_error(run_cli(*command_line(command, ckpts, inputs, out, *flags)), fragment)
    assert "Traceback" not in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_reduced_precision_because_its_graph_is_fp32(ckpts, inputs, tmp_path):
    out = tmp_path / "out"
    message = assert_cli_error(run_cli(*command_line("export", ckpts, inputs, out, "--device", "cpu", "--precision", "bf16")),
                               "--precision bf16")
    if native_bf16_cpu():  # (elsewhere the CPU's own refusal comes first)
        assert "fp32 graph" in message
    assert not out.exists()
    with pytest.raises(bertkit.BertkitError, match="--precision bf16"):
        export(ckpts["classification"], "onnx", out, precision="bf16")
    assert not out.exists()
    assert "fp32 copy" in run_cli("export", "--help").stdout  # --help says how the file is written


def test_serve_refuses_a_gpu_or_bf16_for_backends_that_run_on_the_cpu(ckpts, tmp_path):
    from bertkit.serve.backends import placement

    export_dir = tmp_path / "exp"
    export(ckpts["encoder"], "onnx", export_dir, seq_length=32)
    cpu = torch.device("cpu")
    assert placement(str(export_dir)) == (cpu, "fp32")  # auto: the CPU, also where torch sees a GPU
    assert placement(str(ckpts["encoder"]), device="cpu", precision="float32") == (cpu, "fp32")
    for kwargs, fragment in [
        ({"model": str(export_dir), "device": "cpu", "precision": "bf16"}, "--precision bf16"),
        ({"model": str(ckpts["encoder"]), "backend": "onnx", "device": "cpu", "precision": "bf16"}, "--precision bf16"),
        ({"model": str(ckpts["encoder"]), "quantize": "int8", "device": "cpu", "precision": "bf16"}, "--precision bf16"),
        ({"model": str(export_dir), "device": "cuda"}, "--device cuda"),
    ]:
        with pytest.raises(bertkit.BertkitError, match=fragment):
            placement(**kwargs)
    # through the command: one line, exit 2, and --backend onnx made no export at start-up
    assert_cli_error(run_cli("serve", "--model", export_dir, "--device", "cpu", "--precision", "bf16"), "--precision bf16")


# ---- --device cpu --precision fp32 is today's default output, exactly -----------------------------
def test_predict_and_embed_with_cpu_fp32_equal_the_default_exactly(ckpts, inputs, tmp_path):
    for command in ("predict", "embed"):
        suffix = ".npy" if command == "embed" else ".jsonl"
        default, explicit = tmp_path / f"{command}-default{suffix}", tmp_path / f"{command}-cpu-fp32{suffix}"
        for out, flags in ((default, ()), (explicit, ("--device", "cpu", "--precision", "fp32"))):
            r = run_cli(*command_line(command, ckpts, inputs, out, *flags))
            assert r.returncode == 0, r.stderr
        assert default.read_bytes() == explicit.read_bytes()
    # and the API's default is fp32 on the model's device
    model = bertkit.load(ckpts["classification"])
    assert bertkit.predict(model, inputs["texts"]) == bertkit.predict(model, inputs["texts"], precision="fp32")


def test_export_with_cpu_fp32_equals_the_default(ckpts, inputs, tmp_path):
    from bertkit.export import ExportedModel

    results = []
    for name, flags in (("default", ()), ("cpu-fp32", ("--device", "cpu", "--dtype", "float32"))):
        out = tmp_path / name
        r = run_cli(*command_line("export", ckpts, inputs, out, *flags))
        assert r.returncode == 0, r.stderr
        assert "tolerance 0.0001" in r.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        b = bertkit.load(ckpts["classification"]).tokenizer(inputs["texts"][:8], max_len=64)
        logits = ExportedModel(out).run(b.input_ids.numpy(), b.segment_ids.numpy(), b.attention_mask.long().numpy())[0]
        results.append((manifest["verification"], logits))
    assert results[0][0] == results[1][0]  # the same reference, the same max |diff|
    assert results[0][0]["reference"] == "bertkit PyTorch fp32 (unpadded forward)"
    assert np.array_equal(results[0][1], results[1][1])


def test_serve_backend_with_cpu_fp32_equals_the_default_exactly(ckpts, inputs):
    from bertkit.serve.backends import TorchBackend

    default, explicit = TorchBackend(ckpts["classification"]), TorchBackend(ckpts["classification"], device="cpu", precision="fp32")
    encodings = default.tokenizer.encode_batch(inputs["texts"][:16], max_len=64)
    assert default.forward(encodings, "predict") == explicit.forward(encodings, "predict")
    assert (default.describe()["device"], default.describe()["precision"]) == ("cpu", "fp32")


# ---- --precision bf16 stays within bf16's reach of fp32 -------------------------------------------
@needs_bf16
def test_predict_bf16_within_tolerance_of_fp32(ckpts, inputs, tmp_path):
    rows = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.jsonl"
        r = run_cli(*command_line("predict", ckpts, inputs, out, "--device", "cpu", "--precision", precision))
        assert r.returncode == 0, r.stderr
        rows[precision] = [json.loads(line) for line in out.read_text().splitlines()]
    # fp32's margin between the two most probable labels: bf16 may flip only a near tie
    model = bertkit.load(ckpts["classification"])
    b = model.tokenizer(inputs["texts"], max_len=128)
    with torch.no_grad():
        probs = torch.softmax(model(b.input_ids, b.segment_ids, b.valid_lengths), -1).sort(-1, descending=True).values
    margins = (probs[:, 0] - probs[:, 1]).numpy()
    assert len(rows["bf16"]) == len(rows["fp32"]) == len(inputs["texts"])
    for ref, got, margin in zip(rows["fp32"], rows["bf16"], margins):
        if margin > 0.02:
            assert got["label"] == ref["label"]
        if got["label"] == ref["label"]:
            assert abs(got["score"] - ref["score"]) <= 0.01
    assert rows["bf16"] != rows["fp32"]  # bf16 really ran (autocast is not a no-op)


@needs_bf16
def test_embed_bf16_within_tolerance_of_fp32(inputs, tmp_path):
    vectors = {}
    for precision in ("fp32", "bf16"):  # the real default model: all-minilm-l6-v2
        out = tmp_path / f"{precision}.npy"
        r = run_cli("embed", "--file", inputs["txt"], "--pooling", "mean", "--format", "npy", "--out", out,
                    "--device", "cpu", "--precision", precision)
        assert r.returncode == 0, r.stderr
        vectors[precision] = np.load(out)
    assert vectors["bf16"].dtype == np.float32 and vectors["bf16"].shape == (len(inputs["texts"]), 384)
    close_to_fp32(vectors["bf16"], vectors["fp32"])
    assert not np.array_equal(vectors["bf16"], vectors["fp32"])


@needs_bf16
def test_serve_bf16_within_tolerance_of_fp32_and_reports_it(ckpts, inputs):
    from test_serve import Server

    emb = bertkit.BertEmbedding(ckpts["encoder"])
    server = Server(ckpts["encoder"], "--device", "cpu", "--precision", "bf16")
    try:
        status, _, info = server.request("GET", "/info")
        assert status == 200 and (info["device"], info["precision"]) == ("cpu", "bf16")
        status, _, body = server.post("/v1/embeddings", {"input": inputs["texts"][:12]})
        assert status == 200
    finally:
        stderr = server.stop()
    assert "(cpu, bf16)" in stderr  # the start-up line
    got = np.array([d["embedding"] for d in body["data"]], np.float32)
    expected = emb.sentence_vectors(inputs["texts"][:12])
    close_to_fp32(got, expected)


@needs_bf16
def test_api_precision_keyword_for_embedding_entities_and_answers(ckpts, minilm, inputs):
    texts = inputs["texts"][:16]
    # BertEmbedding: a model object stays where it is; the vectors are float32 on the CPU
    fp32, bf16 = bertkit.BertEmbedding(minilm), bertkit.BertEmbedding(minilm, precision="bf16")
    assert bf16.device == torch.device("cpu") and bf16.precision == "bf16"
    for a, b in zip(fp32(texts), bf16(texts)):
        assert a[0] == b[0] and b[1].dtype == np.float32
        close_to_fp32(b[1][None], a[1][None])
    words32, words16 = fp32.word_vectors(texts[:4]), bf16.word_vectors(texts[:4])
    for a, b in zip(words32, words16):
        assert a[:2] == b[:2]
        close_to_fp32(b[2][None], a[2][None])
    close_to_fp32(bf16.sentence_vectors(texts), fp32.sentence_vectors(texts))
    with pytest.raises(bertkit.BertkitError, match="--precision fp16"):
        bertkit.BertEmbedding(minilm, precision="fp16")
    # entities: the same entities (but near ties), scores within 0.01
    tagger = bertkit.load(ckpts["token_classification"])
    ref, got = bertkit.tag(tagger, texts), bertkit.tag(tagger, texts, precision="bf16")
    same = total = 0
    for r, g in zip(ref, got):
        spans = {(e["start"], e["end"], e["type"]): e["score"] for e in g["entities"]}
        for e in r["entities"]:
            total += 1
            if (e["start"], e["end"], e["type"]) in spans:
                same += 1
                assert abs(spans[e["start"], e["end"], e["type"]] - e["score"]) <= 0.01
    assert total and same >= 0.9 * total
    # answers: the same spans, probabilities within 0.01
    reader = bertkit.load(ckpts["question_answering"])
    for context in texts[:6]:
        question = context[:20] + "?"
        a, b = bertkit.answer(reader, question, context), bertkit.answer(reader, question, context, precision="bf16")
        if (a["start"], a["end"]) == (b["start"], b["end"]):
            assert abs(a["score"] - b["score"]) <= 0.01
    with pytest.raises(bertkit.BertkitError, match="--precision fp16"):
        bertkit.answer(reader, "who?", "Ada did.", precision="fp16")


# ---- serve: autocast is thread-local, so the worker thread must enter it --------------------------
class _Recorder(torch.nn.Module):
    """A classification model stand-in that records, per call, its thread and the autocast state there."""

    def __init__(self, num_labels: int):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.num_labels, self.calls = num_labels, []

    def forward(self, ids, segs, lengths):
        self.calls.append((threading.current_thread().name, torch.is_autocast_enabled("cpu"),
                           torch.get_autocast_dtype("cpu")))
        return torch.zeros(ids.shape[0], self.num_labels) * self.scale


def test_serve_enters_autocast_on_the_worker_thread_that_runs_the_model(ckpts, inputs):
    from bertkit.serve.backends import TorchBackend
    from bertkit.serve.batcher import DynamicBatcher

    backend = TorchBackend(ckpts["classification"])
    backend.precision = "bf16"  # as --precision bf16 sets it (autocast runs on any CPU, if slowly without bf16)
    backend.model = recorder = _Recorder(3)
    encodings = backend.tokenizer.encode_batch(inputs["texts"][:24], max_len=64)
    batcher = DynamicBatcher(backend.forward, max_batch_size=4, max_wait_ms=1.0, workers=2)

    async def clients():
        return await asyncio.gather(*(asyncio.gather(*batcher.submit([e], "predict")) for e in encodings))

    try:
        results = asyncio.run(clients())
    finally:
        batcher.close()
    assert len(results) == 24 and all(r[0]["label"] in ("neg", "pos", "mixed") for r in results)
    assert recorder.calls
    for thread, enabled, dtype in recorder.calls:
        assert thread.startswith("bertkit-batcher-") and enabled and dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")  # this thread (the request side) never entered it
