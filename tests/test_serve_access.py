"""bertkit serve beyond localhost (serve/access.py): the API key and GET /metrics.

In process (FastAPI's TestClient, a small fake model): 401 without the key or with a wrong one (a
JSON error in the route's own shape, naming what is wrong), 200 with it, /health open, the server
still serving after 401s; /metrics parsed with prometheus_client's parser, its request counts equal
to the requests made (by route and status) and its batch-size histogram to the batches the batcher
ran. Then the real command: the key from BERTKIT_API_KEY, never printed, and a bad key is one line."""

from __future__ import annotations

import http.client
import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bertkit import BertTokenizer  # noqa: E402
from bertkit.cli.serve import _access_line, api_key_of  # noqa: E402
from bertkit.errors import BertkitError  # noqa: E402
from bertkit.serve.access import size_buckets  # noqa: E402
from bertkit.serve.app import create_app  # noqa: E402
from bertkit.serve.batcher import DynamicBatcher  # noqa: E402
from conftest import assert_cli_error, run_cli, tiny_checkpoint  # noqa: E402

KEY = "bk-7f3a9c2e5d1b"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "crane", "is", "flying", "driver", "came"]


class FakeBackend:
    """What the routes use of a backend; a sentence's vector is [its token count, 1, 0, 0]."""

    head, hidden_size, max_len, embedding_max_len = "encoder", 4, 32, 32
    recipe = SimpleNamespace(pooling="mean", normalize=False)

    def __init__(self):
        self.tokenizer = BertTokenizer({t: i for i, t in enumerate(VOCAB)})

    def describe(self):
        return {"backend": "fake", "head": self.head}

    def forward(self, encodings, task):
        return [np.array([len(e), 1.0, 0.0, 0.0], np.float32) for e in encodings]

    def close(self):
        pass


@pytest.fixture
def make_client():
    """make_client(api_key=None) -> (a TestClient of a new app, its batcher); closed after the test."""
    opened = []

    def make(api_key=None, max_batch_size=4):
        batcher = DynamicBatcher(FakeBackend().forward, max_batch_size=max_batch_size, max_wait_ms=2.0)
        client = TestClient(create_app(FakeBackend(), batcher, "fake", api_key=api_key)).__enter__()
        opened.append(client)
        return client, batcher

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def scrape(client, headers=None) -> dict:
    """GET /metrics, parsed: {family name: family}."""
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def samples(family, suffix: str = "") -> dict:
    """{frozenset(labels): value} of the family's samples named name + suffix."""
    return {frozenset(s.labels.items()): s.value for s in family.samples if s.name == family.name + suffix}


EMBED = {"input": ["a crane is flying", "a crane driver came"]}


def test_401_without_the_key_200_with_it(make_client):
    client, _ = make_client(api_key=KEY)
    for headers, fragment, challenge in [(None, "needs an API key", "Bearer"),
                                         (bearer("not-the-key"), "wrong API key", 'Bearer error="invalid_token"'),
                                         (bearer(KEY[:-1]), "wrong API key", 'Bearer error="invalid_token"'),
                                         ({"Authorization": f"Basic {KEY}"}, "must be 'Bearer <key>'", "Bearer")]:
        r = client.post("/v1/embeddings", json=EMBED, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == challenge
        error = r.json()["error"]  # OpenAI's shape, like the app's other 4xx errors
        assert error["code"] == 401 and error["type"] == "authentication_error" and fragment in error["message"]
        assert KEY not in r.text and "\n" not in error["message"]
        r = client.post("/embed", json={"inputs": "a crane"}, headers=headers)  # text-embeddings-inference's shape
        assert r.status_code == 401 and r.json()["error_type"] == "Unauthorized" and fragment in r.json()["error"]
        for path in ("/info", "/metrics", "/no-such-route"):  # unknown paths too: 401 says nothing about routes
            assert client.get(path, headers=headers).status_code == 401, path
        # the server keeps serving: the right key still gets its answer
        r = client.post("/v1/embeddings", json=EMBED, headers=bearer(KEY))
        assert r.status_code == 200 and [d["embedding"][0] for d in r.json()["data"]] == [6.0, 6.0]
    assert client.get("/health").status_code == 200  # load balancers' probes carry no key
    assert client.get("/info", headers=bearer(KEY)).json()["model_id"] == "fake"
    assert client.get("/no-such-route", headers=bearer(KEY)).status_code == 404
    assert client.post("/embed", json={"inputs": "a crane"}, headers={"authorization": f"bearer  {KEY} "}).status_code == 200


def test_without_a_key_every_route_is_open(make_client):
    client, _ = make_client()
    assert client.post("/v1/embeddings", json=EMBED).status_code == 200
    assert client.post("/v1/embeddings", json=EMBED, headers=bearer("anything")).status_code == 200
    assert client.get("/metrics").status_code == 200
    batcher = DynamicBatcher(FakeBackend().forward)
    try:
        with pytest.raises(ValueError, match="empty"):
            create_app(FakeBackend(), batcher, "fake", api_key="")
    finally:
        batcher.close()


def test_metrics_count_the_requests_made(make_client):
    client, batcher = make_client(api_key=KEY)
    other_client, _ = make_client()  # a second app in the process keeps its own counts
    other_client.post("/v1/embeddings", json=EMBED)
    made = Counter()

    def call(method, path, status, route=None, **kw):
        assert client.request(method, path, **kw).status_code == status, (method, path)
        made[(route or path, str(status))] += 1

    for n in (1, 3, 6):  # batches of 1, 3, then 4 + 2 (max_batch_size 4)
        call("POST", "/v1/embeddings", 200, json={"input": ["a crane is flying"] * n}, headers=bearer(KEY))
    call("POST", "/embed", 200, json={"inputs": ["a crane", "a driver"]}, headers=bearer(KEY))  # a batch of 2
    call("POST", "/v1/embeddings", 422, json={"input": []}, headers=bearer(KEY))
    call("POST", "/v1/embeddings", 401, json=EMBED)
    call("POST", "/v1/embeddings", 401, json=EMBED, headers=bearer("wrong"))
    call("GET", "/v1/embeddings", 405, headers=bearer(KEY))  # a wrong method counts under its route
    call("GET", "/health", 200)
    call("GET", "/health", 200)
    call("GET", "/info", 200, headers=bearer(KEY))
    for path in ("/wp-login.php", "/.env", "/admin/x"):  # a scanner's paths share one label
        call("GET", path, 404, route="unmatched", headers=bearer(KEY))
    call("GET", "/.git/config", 401, route="unmatched")
    call("GET", "/metrics", 401, route="/metrics")
    call("GET", "/metrics", 200, headers=bearer(KEY))

    families = scrape(client, bearer(KEY))  # this scrape is counted after its answer, so not in it
    counts = samples(families["bertkit_requests"], "_total")
    assert counts == {frozenset({("route", r), ("status", s)}): float(n) for (r, s), n in made.items()}
    by_route = Counter()
    for (route, _), n in made.items():
        by_route[route] += n
    latency = samples(families["bertkit_request_duration_seconds"], "_count")
    assert latency == {frozenset({("route", r)}): float(n) for r, n in by_route.items()}
    assert samples(families["bertkit_queue_depth"]) == {frozenset(): 0.0}

    sizes = families["bertkit_batch_size"]
    assert samples(sizes, "_count") == {frozenset(): 5.0} and batcher.batches_run == 5
    assert samples(sizes, "_sum") == {frozenset(): 12.0} and batcher.inputs_run == 12
    buckets = {dict(k)["le"]: v for k, v in samples(sizes, "_bucket").items()}
    assert buckets == {"1.0": 1.0, "2.0": 3.0, "4.0": 5.0, "+Inf": 5.0}  # cumulative: 1 | 2, 2 | 3, 4
    # the second app counted its own request only
    assert samples(scrape(other_client)["bertkit_requests"], "_total") == {
        frozenset({("route", "/v1/embeddings"), ("status", "200")}): 1.0}


def test_batch_size_buckets_follow_max_batch_size():
    assert size_buckets(1) == [1]
    assert size_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert size_buckets(24) == [1, 2, 4, 8, 16, 24]


def test_the_key_comes_from_the_flag_else_the_environment():
    env = {"BERTKIT_API_KEY": "from-env"}
    assert api_key_of(None, env) == "from-env"
    assert api_key_of("from-flag", env) == "from-flag"  # the flag wins
    assert api_key_of(None, {}) is None and api_key_of(None, {"BERTKIT_API_KEY": ""}) is None
    for flag, source in [("", "--api-key"), ("two words", "--api-key"), ("clé", "--api-key")]:
        with pytest.raises(BertkitError, match=source):
            api_key_of(flag, {})
    with pytest.raises(BertkitError, match="BERTKIT_API_KEY"):
        api_key_of(None, {"BERTKIT_API_KEY": "tab\tkey"})


def test_the_startup_log_says_whether_a_key_is_needed():
    assert "API key required" in _access_line(KEY, "0.0.0.0") and KEY not in _access_line(KEY, "0.0.0.0")
    assert "anyone who can reach 0.0.0.0" in _access_line(None, "0.0.0.0")
    assert _access_line(None, "127.0.0.1") is None  # on localhost without a key: the log as before


def send(port, method, path, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_serve_takes_the_key_from_the_environment_and_never_prints_it(tmp_path, monkeypatch):
    from test_serve import Server

    model = tiny_checkpoint(tmp_path / "enc", VOCAB)
    monkeypatch.setenv("BERTKIT_API_KEY", KEY)
    monkeypatch.setenv("BERTKIT_NATIVE", "0")
    server = Server(model)  # ready when /health answers: it needs no key
    try:
        for headers in (None, bearer("wrong"), None, bearer("wrong")):
            status, text = send(server.port, "POST", "/v1/embeddings", headers, EMBED)
            assert status == 401 and "API key" in json.loads(text)["error"]["message"]
        status, text = send(server.port, "POST", "/v1/embeddings", bearer(KEY), EMBED)
        assert status == 200 and len(json.loads(text)["data"]) == 2
        status, text = send(server.port, "GET", "/metrics", bearer(KEY))
        counts = samples({f.name: f for f in text_string_to_metric_families(text)}["bertkit_requests"], "_total")
        assert counts[frozenset({("route", "/v1/embeddings"), ("status", "401")})] == 4.0
        assert counts[frozenset({("route", "/v1/embeddings"), ("status", "200")})] == 1.0
    finally:
        stderr = server.stop()
    assert "API key required" in stderr and KEY not in stderr


def test_a_bad_key_is_a_one_line_error(tmp_path):
    result = run_cli("serve", "--model", str(tmp_path / "none"), "--api-key", "two words")
    assert_cli_error(result, "--api-key", "printable ASCII")
    result = run_cli("serve", "--model", str(tmp_path / "none"), env={"BERTKIT_API_KEY": "bad key"})
    assert_cli_error(result, "BERTKIT_API_KEY")
