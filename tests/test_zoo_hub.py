"""Downloads through huggingface_hub, against a local HTTP server on 127.0.0.1 standing in for the Hub.

The server implements what huggingface_hub 2.x asks of the Hub for `model_info` and `hf_hub_download`
(read in its file_download.py / hf_api.py): `GET /api/models/{repo}/revision/{rev}` (JSON with the
commit sha and the file list) and `HEAD` / `GET /{repo}/resolve/{rev}/{file}` with `ETag`,
`X-Repo-Commit` and `Content-Length` (and byte ranges, for resumed downloads). It serves a small
checkpoint that bertkit wrote, and logs every request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import bertkit
from conftest import REPO, assert_cli_error, run_cli, tiny_checkpoint

REPO_ID = "google/bert_uncased_L-2_H-128_A-2"  # what `bert_2_128_2/uncased` names
COMMIT = "0123456789abcdef0123456789abcdef01234567"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "crane", "is", "flying", "##s", "driver", "came"]


class FakeHub:
    """Repositories served over HTTP on 127.0.0.1; `mode` "break" drops the weights download halfway,
    "stall" sends half of it and waits until `release` is set."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.log, self.mode = repos, [], "normal"
        self.half_sent, self.release = threading.Event(), threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                hub.handle(self, head=False)

            def do_HEAD(self):
                hub.handle(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def file_gets(self) -> list[str]:
        return [path for method, path in self.log if method == "GET" and "/resolve/" in path]

    def handle(self, req: BaseHTTPRequestHandler, head: bool):
        self.log.append((req.command, req.path))
        if m := re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/?]+))?(?:\?.*)?", req.path):
            files = self.repos.get(m[1])
            if files is None:
                return self.send(req, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            body = json.dumps({"id": m[1], "modelId": m[1], "sha": COMMIT, "private": False,
                               "siblings": [{"rfilename": f} for f in files]}).encode()
            return self.send(req, 200, body, {"Content-Type": "application/json"})
        if m := re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", req.path):
            files = self.repos.get(m[1])
            if files is None or m[3] not in files:
                return self.send(req, 404, b"", {"X-Error-Code": "EntryNotFound" if files else "RepoNotFound"})
            data = files[m[3]]
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT,
                       "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if head:
                return self.send(req, 200, data, headers, head=True)
            weights = m[3].endswith((".safetensors", ".bin"))
            if weights and self.mode == "break" and req.headers.get("Range"):
                return self.send(req, 503, b"", {})  # the retry of a broken download fails too
            start = 0
            if rng := re.fullmatch(r"bytes=(\d+)-", req.headers.get("Range", "")):
                start = int(rng[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            status = 206 if start else 200
            if weights and self.mode in ("break", "stall"):
                req.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(data) - start)}.items():
                    req.send_header(k, v)
                req.end_headers()
                req.wfile.write(data[start : start + (len(data) - start) // 2])
                req.wfile.flush()
                self.half_sent.set()
                if self.mode == "stall":
                    self.release.wait(30)
                req.close_connection = True  # the rest never comes: the connection drops
                return
            return self.send(req, status, data[start:], headers)
        self.send(req, 404, b"", {})

    @staticmethod
    def send(req, status, body, headers, head=False):
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A bert_2_128_2 checkpoint written by bertkit (random weights), as the files a Hub repository holds."""
    directory = tiny_checkpoint(tmp_path_factory.mktemp("tiny"), VOCAB, seed=3, preset="bert_2_128_2", randomize=True)
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    files["modeling_custom.py"] = b"raise SystemExit('remote code must never be fetched')\n"
    files["tf_model.h5"] = b"not needed"
    return files


@pytest.fixture
def hub(tiny_repo, tmp_path, monkeypatch):
    server = FakeHub({REPO_ID: tiny_repo, "someone/tiny-bert": tiny_repo})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.close()


def snapshot_dir(tmp_path, repo=REPO_ID) -> Path:
    return tmp_path / "hf-cache" / ("models--" + repo.replace("/", "--")) / "snapshots" / COMMIT


def test_first_load_downloads_second_is_served_from_the_cache(hub, tmp_path, tiny_repo):
    model = bertkit.load("bert_2_128_2/uncased")
    snapshot = snapshot_dir(tmp_path)
    assert model.load_report["directory"] == str(snapshot)
    # Only what bertkit reads: config, weights, vocabulary and its casing; never code, never other formats.
    wanted = ["bertkit.json", "config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    assert sorted(p.name for p in snapshot.iterdir()) == wanted
    assert sorted(path.rsplit("/", 1)[1] for path in hub.file_gets()) == wanted
    assert (snapshot / "model.safetensors").read_bytes() == tiny_repo["model.safetensors"]
    assert (tmp_path / "hf-cache" / "models--google--bert_uncased_L-2_H-128_A-2" / "refs" / "main").read_text() == COMMIT
    assert model.tokenizer.tokenize("A crane is flying") == ["a", "crane", "is", "flying"]

    hub.log.clear()
    again = bertkit.load("bert_2_128_2", dataset="uncased")
    assert hub.log == []  # not even a metadata request
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_plain_hub_id_and_pytorch_bin_fallback(hub, tmp_path, tiny_repo):
    # A repository with only pytorch_model.bin (like some of Google's small BERTs): the .bin is fetched.
    from safetensors.torch import load as load_safetensors

    tensors = load_safetensors(tiny_repo["model.safetensors"])
    path = tmp_path / "pytorch_model.bin"
    torch.save(tensors, path)
    bin_repo = {k: v for k, v in tiny_repo.items() if k != "model.safetensors"} | {"pytorch_model.bin": path.read_bytes()}
    hub.repos["someone/bin-only"] = bin_repo
    model = bertkit.load("someone/bin-only")
    assert model.load_report["directory"] == str(snapshot_dir(tmp_path, "someone/bin-only"))
    assert sorted(p.rsplit("/", 1)[1] for p in hub.file_gets()) == ["bertkit.json", "config.json", "pytorch_model.bin",
                                                                    "tokenizer_config.json", "vocab.txt"]


def test_no_network_is_a_quick_one_line_error(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the Hub cannot be reached
    start = time.monotonic()
    with pytest.raises(bertkit.BertkitError) as e:
        bertkit.load("bert_2_128_2/uncased")
    assert time.monotonic() - start < 30
    cache_folder = tmp_path / "hf-cache" / "models--google--bert_uncased_L-2_H-128_A-2"
    assert str(e.value).startswith("bert_2_128_2/uncased (Hub repository google/bert_uncased_L-2_H-128_A-2) is not on "
                                   "this machine and the download failed (ConnectError")
    assert str(e.value).endswith(f"`bertkit zoo --fetch bert_2_128_2/uncased`, which puts it in {cache_folder}")


def test_unknown_repository(hub):
    with pytest.raises(bertkit.BertkitError) as e:
        bertkit.load("nobody/no-such-model")
    assert "unknown model 'nobody/no-such-model'" in str(e.value) and "not found" in str(e.value)


def test_interrupted_download_leaves_nothing_half_written(hub, tmp_path, tiny_repo):
    hub.mode = "break"  # the connection drops halfway through the weights; the resumed request fails
    with pytest.raises(bertkit.BertkitError) as e:
        bertkit.load("bert_2_128_2/uncased")
    assert "the download failed" in str(e.value) and "\n" not in str(e.value)
    folder = tmp_path / "hf-cache" / "models--google--bert_uncased_L-2_H-128_A-2"
    assert not (snapshot_dir(tmp_path) / "model.safetensors").exists()
    assert [p.name for p in (folder / "blobs").iterdir() if p.name.endswith(".incomplete")] == []
    hub.mode = "normal"
    model = bertkit.load("bert_2_128_2/uncased")  # the next attempt completes it
    assert (snapshot_dir(tmp_path) / "model.safetensors").read_bytes() == tiny_repo["model.safetensors"]
    assert model.load_report["missing"] == []


def test_killed_download_then_offline_then_resumed(hub, tmp_path, tiny_repo):
    """The process is killed (SIGKILL) mid-download: no weights file appears, offline loading says what
    to fetch and where, and the next online load completes the model."""
    hub.mode = "stall"
    env = {k: os.environ[k] for k in ("HF_ENDPOINT", "HF_HUB_CACHE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    proc = subprocess.Popen([sys.executable, "-m", "bertkit", "info", "bert_2_128_2/uncased"], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hub.half_sent.wait(60), "the download never started"
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    hub.release.set()
    assert not (snapshot_dir(tmp_path) / "model.safetensors").exists()
    assert (snapshot_dir(tmp_path) / "config.json").exists()  # fetched before the weights: the snapshot is incomplete

    r = run_cli("info", "bert_2_128_2/uncased", "--offline", env=env)
    cache_folder = tmp_path / "hf-cache" / "models--google--bert_uncased_L-2_H-128_A-2"
    assert_cli_error(r, "bert_2_128_2/uncased (Hub repository google/bert_uncased_L-2_H-128_A-2) is not on this machine",
                     "downloads are off", "bertkit zoo --fetch bert_2_128_2/uncased", str(cache_folder))

    hub.mode, hub.log = "normal", []
    model = bertkit.load("bert_2_128_2/uncased")
    assert (snapshot_dir(tmp_path) / "model.safetensors").read_bytes() == tiny_repo["model.safetensors"]
    assert model.config.num_hidden_layers == 2


def test_zoo_fetch_and_listing(hub, tmp_path):
    r = run_cli("zoo", "--fetch", "bert_2_128_2/uncased", "someone/tiny-bert", env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"bert_2_128_2/uncased\t{snapshot_dir(tmp_path)}",
                                     f"someone/tiny-bert\t{snapshot_dir(tmp_path, 'someone/tiny-bert')}"]
    r = run_cli("zoo", "--json", env={"HF_HUB_CACHE": str(tmp_path / "hf-cache")})
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    here = {row["name"]: row["here"] for row in rows}
    assert here["bert_2_128_2/uncased"] == "hf-cache" and here["bert_4_128_2/uncased"] == ""
