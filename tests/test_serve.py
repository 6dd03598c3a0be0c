"""bertkit serve: a real server process on 127.0.0.1 and a real HTTP client (http.client + threads).

Each endpoint against the in-process API, 32 concurrent clients against sequential calls, overload
(503 + Retry-After while accepted requests complete), bad requests (4xx JSON naming the problem),
SIGTERM under load, and model files that are corrupt or another model's."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import bertkit
from bertkit.export import export
from conftest import REPO, assert_cli_error, run_cli
from test_export import head_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m bertkit serve` in a subprocess, ready when /health answers."""

    def __init__(self, model, *args):
        self.port = free_port()
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bertkit", "serve", "--model", str(model), "--port", str(self.port), "--threads", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server did not start")

    def request(self, method, path, body=None, raw: bytes | None = None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            payload = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(payload) if payload else None
        finally:
            conn.close()

    def post(self, path, body):
        return self.request("POST", path, body)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, minilm, minilm_dir):
    root = tmp_path_factory.mktemp("serve-ckpt")
    out = {head: head_checkpoint(root, head, minilm.tokenizer, seed=3)
           for head in ("encoder", "classification", "question_answering")}
    # the encoder ships all-minilm-l6-v2's sentence-transformers recipe: mean pooling + L2 normalisation
    shutil.copytree(minilm_dir / "1_Pooling", out["encoder"] / "1_Pooling")
    for name in ("modules.json", "sentence_bert_config.json"):  # the latter: max_seq_length 256
        shutil.copyfile(minilm_dir / name, out["encoder"] / name)
    return out


@pytest.fixture(scope="module")
def servers():
    started = {}
    yield started
    for s in started.values():
        s.stop()


def _server(servers, name, model, *args):
    if name not in servers:
        servers[name] = Server(model, *args)
    return servers[name]


@pytest.fixture
def enc(servers, ckpts):
    return _server(servers, "enc", ckpts["encoder"], "--max-batch-size", "8", "--max-wait-ms", "20",
                   "--max-client-batch-size", "16")


@pytest.fixture(scope="module")
def emb(ckpts):
    return bertkit.BertEmbedding(ckpts["encoder"])


def test_embeddings_endpoints_equal_the_in_process_api(enc, emb, sst2_dev):
    texts = sst2_dev[:10]
    expected = emb.sentence_vectors(texts)  # the checkpoint's recipe: normalised means
    assert np.allclose(np.linalg.norm(expected, axis=1), 1, atol=1e-5)
    status, _, body = enc.post("/v1/embeddings", {"input": texts, "model": "tiny"})
    assert status == 200 and body["object"] == "list" and body["model"] == "tiny"
    assert [d["index"] for d in body["data"]] == list(range(10))
    assert np.abs(np.array([d["embedding"] for d in body["data"]]) - expected).max() < 1e-6
    assert body["usage"]["prompt_tokens"] == sum(len(e) for e in emb.tokenizer.encode_batch(texts))
    status, _, body = enc.post("/v1/embeddings", {"input": texts[0], "encoding_format": "base64"})
    assert status == 200
    assert np.abs(np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), "<f4") - expected[0]).max() < 1e-6
    status, _, body = enc.post("/embed", {"inputs": texts})  # text-embeddings-inference: a list of vectors
    assert status == 200 and np.abs(np.array(body) - expected).max() < 1e-6
    status, _, body = enc.post("/embed", {"inputs": texts[:3], "normalize": False})
    assert status == 200 and np.abs(np.array(body) - emb.sentence_vectors(texts[:3], pooling="mean")).max() < 1e-6
    status, _, info = enc.request("GET", "/info")
    assert status == 200 and info["head"] == "encoder" and info["backend"] == "torch"
    assert info["embedding"] == {"dimensions": 128, "pooling": "mean", "normalize": True, "max_input_length": 256}
    assert enc.request("GET", "/health")[:3:2] == (200, {"status": "ok"})


def test_predict_and_answer_equal_the_in_process_api(servers, ckpts, sst2_dev, mrpc_dev):
    cls = _server(servers, "cls", ckpts["classification"])
    model = bertkit.load(ckpts["classification"])
    texts, pairs = sst2_dev[:6], mrpc_dev[:3]
    status, _, body = cls.post("/predict", {"inputs": texts + [list(p) for p in pairs]})
    assert status == 200
    expected = bertkit.predict(model, texts) + bertkit.predict(model, [a for a, _ in pairs], [b for _, b in pairs])
    assert [r["label"] for r in body] == [r["label"] for r in expected]
    assert np.allclose([r["score"] for r in body], [r["score"] for r in expected], atol=1e-6)
    assert cls.request("GET", "/info")[2]["labels"] == ["neg", "pos", "mixed"]

    qa = _server(servers, "qa", ckpts["question_answering"])
    from bertkit.inference.answer import answer

    qa_model = bertkit.load(ckpts["question_answering"])
    question, context = "Who wrote the novel?", mrpc_dev[5][0] + " " + mrpc_dev[6][0]
    status, _, body = qa.post("/answer", {"question": question, "context": context})
    expected = answer(qa_model, question, context)
    assert status == 200 and body["text"] == expected["text"] and (body["start"], body["end"]) == (expected["start"], expected["end"])
    assert body["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert context[body["start"]:body["end"]] == body["text"]
    status, _, body = qa.post("/answer", {"question": question})
    assert status == 422 and "'context' is missing" in body["error"]["message"]


def test_32_concurrent_clients_get_the_sequential_results(enc, sst2_dev):
    requests = [sst2_dev[i * 3:i * 3 + 1 + i % 3] for i in range(32)]  # 1 to 3 texts each, mixed lengths
    sequential = [enc.post("/v1/embeddings", {"input": r})[2] for r in requests]
    before = enc.request("GET", "/info")[2]
    results: list = [None] * 32
    barrier = threading.Barrier(32)

    def client(i):
        barrier.wait()
        results[i] = enc.post("/v1/embeddings", {"input": requests[i]})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for (status, _, body), seq in zip(results, sequential):
        assert status == 200
        assert len(body["data"]) == len(seq["data"])
        for got, want in zip(body["data"], seq["data"]):
            assert np.abs(np.array(got["embedding"]) - np.array(want["embedding"])).max() < 1e-6
    after = enc.request("GET", "/info")[2]
    inputs, batches = after["inputs_run"] - before["inputs_run"], after["batches_run"] - before["batches_run"]
    assert inputs == sum(len(r) for r in requests)
    assert batches < inputs / 2  # the concurrent inputs really shared forward passes (at most 8 each)


def test_bad_requests_get_a_4xx_json_error_naming_the_problem(enc):
    long_text = " ".join(["word"] * 400)  # > 256 tokens, the recipe's max_seq_length
    cases = [
        ("/v1/embeddings", b'{"input": ["a", ', 400, "not valid JSON"),
        ("/v1/embeddings", b'["a"]', 422, "must be a JSON object"),
        ("/v1/embeddings", {"inputs": "a"}, 422, "field 'input' is missing"),
        ("/v1/embeddings", {"input": 5}, 422, "'input' must be a string or a list of strings, got a number"),
        ("/v1/embeddings", {"input": ["fine", {"x": 1}]}, 422, "input[1] must be a string, got an object"),
        ("/v1/embeddings", {"input": ""}, 422, "input[0] is an empty text"),
        ("/v1/embeddings", {"input": []}, 422, "'input' is an empty list"),
        ("/v1/embeddings", {"input": ["t"] * 17}, 413, "17 inputs, more than the limit of 16"),
        ("/v1/embeddings", {"input": ["short", long_text]}, 413, "input[1] is longer than the limit of 256 tokens"),
        ("/v1/embeddings", {"input": "a", "encoding_format": "int"}, 422, "encoding_format"),
        ("/v1/embeddings", {"input": "a", "dimensions": 64}, 422, "'dimensions' is 64; this model's vectors have 128"),
        ("/embed", {"inputs": "a", "normalize": "yes"}, 422, "'normalize' must be true or false"),
        ("/predict", {"inputs": "a"}, 400, "needs a model with a classification or regression head"),
    ]
    for path, body, status, fragment in cases:
        got, _, payload = enc.request("POST", path, raw=body if isinstance(body, bytes) else None,
                                      body=None if isinstance(body, bytes) else body)
        message = payload["error"] if path == "/embed" else payload["error"]["message"]
        assert got == status and fragment in message, (path, body if len(str(body)) < 80 else "...", got, message)
    assert enc.post("/embed", {"inputs": long_text, "truncate": True})[0] == 200  # TEI's opt-in truncation
    assert enc.request("GET", "/nope")[0] == 404
    assert enc.post("/v1/embeddings", {"input": "still serving"})[0] == 200


def test_onnx_export_backend_matches_the_pytorch_model(servers, ckpts, emb, tmp_path_factory, sst2_dev):
    out = tmp_path_factory.mktemp("onnx-export")
    export(ckpts["encoder"], "onnx", out)
    server = _server(servers, "onnx", out)
    texts = sst2_dev[40:56]
    status, _, body = server.post("/v1/embeddings", {"input": texts})
    assert status == 200
    assert np.abs(np.array([d["embedding"] for d in body["data"]]) - emb.sentence_vectors(texts)).max() < 1e-4
    info = server.request("GET", "/info")[2]
    assert info["backend"] == "onnx" and info["export"]["format"] == "onnx"
    assert info["embedding"] == {"dimensions": 128, "pooling": "mean", "normalize": True, "max_input_length": 256}


def _flood(server, bodies, start_event=None):
    results: list = [None] * len(bodies)

    def client(i):
        if start_event:
            start_event.wait()
        results[i] = server.post("/v1/embeddings", bodies[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    return threads, results


def test_overload_gives_503_while_accepted_requests_complete(servers, ckpts, emb, sst2_dev):
    server = _server(servers, "small-queue", ckpts["encoder"], "--max-batch-size", "2", "--max-queue", "16",
                     "--max-client-batch-size", "16")
    # 24 clients at once, 16 inputs each: the queue holds one request's inputs, the model takes 2 at a time
    bodies = [{"input": sst2_dev[16 * i:16 * i + 16]} for i in range(24)]
    go = threading.Event()
    threads, results = _flood(server, bodies, go)
    go.set()
    for t in threads:
        t.join(120)
    statuses = [r[0] for r in results]
    assert 503 in statuses and 200 in statuses, statuses
    for (status, headers, body), request in zip(results, bodies):
        if status == 503:
            assert headers.get("retry-after") == "1" and "overloaded" in body["error"]["message"]
        else:
            assert status == 200
            got = np.array([d["embedding"] for d in body["data"]])
            assert np.abs(got - emb.sentence_vectors(request["input"])).max() < 1e-6


def test_sigterm_under_load_answers_every_accepted_request(ckpts, emb, sst2_dev):
    server = Server(ckpts["encoder"], "--max-batch-size", "2", "--max-client-batch-size", "16")
    try:
        bodies = [{"input": sst2_dev[16 * i:16 * i + 16]} for i in range(12)]
        threads, results = _flood(server, bodies)
        deadline = time.monotonic() + 30
        while (info := server.request("GET", "/info")[2])["accepted"] < 16 * 12:  # every request is in
            assert time.monotonic() < deadline
            time.sleep(0.005)
        server.proc.send_signal(signal.SIGTERM)
        assert info["queued"] > 0  # the signal came while accepted inputs were still waiting for the model
        for t in threads:
            t.join(60)
        for (status, _, body), request in zip(results, bodies):
            assert status == 200
            got = np.array([d["embedding"] for d in body["data"]])
            assert np.abs(got - emb.sentence_vectors(request["input"])).max() < 1e-6
        server.proc.wait(30)
        log = server.proc.stderr.read()
        assert "every accepted request was answered" in log
        assert "bertkit serve: inference path: fp32: " in log  # which CPU path runs, and why (cpu/optimize.py)
        with pytest.raises(OSError):
            server.request("GET", "/health", timeout=5)
    finally:
        server.stop()


def test_corrupt_or_foreign_model_files_are_a_clear_error(ckpts, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    onnx_dir = tmp_path / "onnx"
    export(ckpts["classification"], "onnx", onnx_dir)
    (onnx_dir / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    assert_cli_error(run_cli("serve", "--model", onnx_dir, "--port", str(free_port())), "model.onnx", "not a loadable ONNX model")

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), onnx_dir / "model.onnx")
    assert_cli_error(run_cli("serve", "--model", onnx_dir, "--port", str(free_port())), "model.onnx", "another model's file")

    manifest = json.loads((onnx_dir / "manifest.json").read_text())  # a torch-format export whose file is not one
    (onnx_dir / "manifest.json").write_text(json.dumps({**manifest, "format": "torch", "model_file": "model.pt2"}))
    (onnx_dir / "model.pt2").write_bytes(b"PK\x03\x04 truncated zip")
    assert_cli_error(run_cli("serve", "--model", onnx_dir, "--port", str(free_port())), "model.pt2",
                     "not a loadable PyTorch export")

    ckpt = tmp_path / "ckpt"
    shutil.copytree(ckpts["encoder"], ckpt)
    (ckpt / "model.safetensors").write_bytes(b"not safetensors at all")
    assert_cli_error(run_cli("serve", "--model", ckpt, "--port", str(free_port())), "model.safetensors", "corrupt")


def test_onnx_backend_answers_like_the_pytorch_qa_model(ckpts, tmp_path, mrpc_dev):
    """/answer on an ONNX export goes through the same SQuAD post-processing as model.answer."""
    from bertkit.inference.answer import answer
    from bertkit.serve.backends import ExportBackend

    export(ckpts["question_answering"], "onnx", tmp_path / "qa")
    backend = ExportBackend(tmp_path / "qa")
    model = bertkit.load(ckpts["question_answering"])
    context = " ".join(a for a, _ in mrpc_dev[:30])  # long enough for several windows
    for question in ("Who said it?", "How much did it cost?"):
        got, want = backend.answer(question, context), answer(model, question, context)
        assert (got["text"], got["start"], got["end"]) == (want["text"], want["start"], want["end"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)


def test_fill_mask_route_equals_the_cli(servers, ckpts, minilm, tmp_path_factory):
    """POST /fill-mask {"inputs": [...], "top_k": k}: the masks of each input, as `bertkit fill-mask` prints them."""
    pretrained = head_checkpoint(tmp_path_factory.mktemp("mlm"), "pretraining", minilm.tokenizer, seed=5)
    server = _server(servers, "mlm", pretrained)
    texts = ["the movie was [MASK] .", "a [MASK] and [MASK] film"]
    status, _, body = server.post("/fill-mask", {"inputs": texts, "top_k": 3})
    assert status == 200, body
    cli = run_cli("fill-mask", "--model", pretrained, "--top-k", "3", *texts)
    assert cli.returncode == 0, cli.stderr
    assert body == [json.loads(line)["masks"] for line in cli.stdout.splitlines()]
    for bad, field in (({"inputs": ["no mask"]}, "inputs[0]"), ({"inputs": ["a [MASK]"], "top_k": 0}, "top_k")):
        status, _, err = server.post("/fill-mask", bad)
        assert status == 422 and field in json.dumps(err)
    status, _, err = _server(servers, "enc", ckpts["encoder"]).post("/fill-mask", {"inputs": ["a [MASK]"]})
    assert status == 422 and "masked-LM head" in json.dumps(err)
