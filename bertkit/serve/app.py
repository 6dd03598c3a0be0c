"""The HTTP API (FastAPI): routes, request validation, errors.

    POST /v1/embeddings   OpenAI's shape: {"input": str | [str], "encoding_format": "float" | "base64"}
    POST /embed           text-embeddings-inference's shape: {"inputs": str | [str], "normalize", "truncate"}
    POST /predict         {"inputs": str | [str | [text, text_b]]} -> [{"label", "score"}] per input
    POST /answer          {"question": str, "context": str} -> {"text", "start", "end", "score"}
    GET  /health, /info, /metrics (Prometheus; access.py, with the API key check)

Bodies are parsed and checked here, before anything is queued, so a bad request is answered with a
4xx JSON error that names the field and never reaches (or slows) the batch other clients share.
Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}; /embed uses
text-embeddings-inference's {"error", "error_type"}, so clients of either server keep working.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..errors import BertkitError
from ..tokenizer import TruncationWarning
from .access import Metrics, add_access
from .batcher import DynamicBatcher, QueueFull
from .problems import Problem, problem_response

JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list", dict: "an object",
              type(None): "null"}


def _json_type(value) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def create_app(backend, batcher: DynamicBatcher, model_name: str, max_client_batch_size: int = 32,
               max_body_bytes: int = 4 << 20, max_context_chars: int = 100_000, api_key: str | None = None) -> FastAPI:
    """The app; with `api_key`, every request but GET /health needs `Authorization: Bearer <api_key>`."""
    api = Api(backend, batcher, model_name, max_client_batch_size, max_body_bytes, max_context_chars)
    app = FastAPI(title="bertkit", lifespan=_lifespan(backend, batcher), docs_url=None, redoc_url=None,
                  openapi_url=None)
    _add_error_handlers(app)
    _add_info_routes(app, api)
    _add_embedding_routes(app, api)
    _add_task_routes(app, api)
    add_access(app, Metrics(batcher), api_key)  # GET /metrics, the key check, the request counts
    return app


# ---- startup and shutdown -------------------------------------------------------------------------


def _lifespan(backend, batcher: DynamicBatcher):
    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has stopped accepting and finished the requests it had; let the worker go.
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        backend.close()
        print("bertkit serve: stopped; every accepted request was answered", file=sys.stderr, flush=True)

    return lifespan


# ---- errors ---------------------------------------------------------------------------------------


async def _problem(request: Request, e: Problem):
    return problem_response(request.url.path, e)


async def _not_found(request: Request, e):
    return JSONResponse({"error": {"message": f"no route {request.method} {request.url.path}", "type": "not_found",
                                   "param": None, "code": 404}}, status_code=404)


async def _wrong_method(request: Request, e):
    return JSONResponse({"error": {"message": f"{request.url.path} does not take {request.method}",
                                   "type": "invalid_request_error", "param": None, "code": 405}}, status_code=405)


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(404, _not_found)
    app.add_exception_handler(405, _wrong_method)


# ---- what every route shares: body parsing, validation, the batcher ------------------------------


@dataclass(frozen=True)
class Api:
    """The model, the batcher and the request limits the route handlers share."""

    backend: object
    batcher: DynamicBatcher
    model_name: str
    max_client_batch_size: int
    max_body_bytes: int
    max_context_chars: int

    async def body_of(self, request: Request) -> dict:
        limit = self.max_body_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise Problem(413, f"request body is {int(length)} bytes, more than the limit of {limit}")
        raw = await request.body()
        if len(raw) > limit:
            raise Problem(413, f"request body is {len(raw)} bytes, more than the limit of {limit}")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise Problem(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise Problem(422, f"request body must be a JSON object, got {_json_type(body)}")
        return body

    def texts_of(self, body: dict, field: str, pairs: bool = False) -> list:
        if field not in body:
            raise Problem(422, f"field {field!r} is missing", field)
        value = body[field]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise Problem(422, f"field {field!r} must be a string or a list of strings, got {_json_type(value)}", field)
        if not items:
            raise Problem(422, f"field {field!r} is an empty list", field)
        if len(items) > self.max_client_batch_size:
            raise Problem(413, f"field {field!r} has {len(items)} inputs, more than the limit of "
                               f"{self.max_client_batch_size} per request", field)
        for i, t in enumerate(items):
            _check_text(field, i, t, pairs)
        return items

    def encode(self, field: str, items: list, max_len: int, truncate: bool = False) -> list:
        """Tokenize (pairs too); over-long inputs are an error unless `truncate`."""
        tokenizer = self.backend.tokenizer
        singles = [i for i, t in enumerate(items) if isinstance(t, str)]
        pairs = [i for i, t in enumerate(items) if not isinstance(t, str)]
        out: list = [None] * len(items)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            if singles:
                for i, e in zip(singles, tokenizer.encode_batch([items[i] for i in singles], max_len=max_len)):
                    out[i] = e
            if pairs:
                encs = tokenizer.encode_batch([items[i][0] for i in pairs], [items[i][1] for i in pairs], max_len=max_len)
                for i, e in zip(pairs, encs):
                    out[i] = e
        if not truncate:
            for i, e in enumerate(out):
                if e.truncated:
                    raise Problem(413, f"{field}[{i}] is longer than the limit of {max_len} tokens", f"{field}[{i}]")
        return out

    def need_head(self, route: str, *heads: str) -> None:
        if self.backend.head not in heads:
            raise Problem(400, f"{route} needs a model with a {' or '.join(heads)} head; this server's model's head "
                               f"is {self.backend.head}")

    def submit(self, encodings: list, task: str) -> list:
        try:
            return self.batcher.submit(encodings, task)
        except QueueFull as e:
            raise Problem(503, f"server overloaded: {e}; retry later", kind="overloaded") from None

    async def call(self, job):
        """Run `job` on the batcher's worker (one at a time); a user's mistake it finds is a 422."""
        try:
            future = self.batcher.submit_call(job)
        except QueueFull as e:
            raise Problem(503, f"server overloaded: {e}; retry later", kind="overloaded") from None
        try:
            return await future
        except BertkitError as e:
            raise Problem(422, str(e)) from None


def _check_text(field: str, i: int, t, pairs: bool) -> None:
    """`field[i]`: a non-blank string, or (with `pairs`) a list of two."""
    parts = t if pairs and isinstance(t, list) else [t]
    if pairs and isinstance(t, list) and len(t) != 2:
        raise Problem(422, f"{field}[{i}] must be a text or a pair [text, text_b], got a list of {len(t)}", f"{field}[{i}]")
    for p in parts:
        if not isinstance(p, str):
            what = "a string or a pair of strings" if pairs else "a string"
            raise Problem(422, f"{field}[{i}] must be {what}, got {_json_type(p)}", f"{field}[{i}]")
        if not p.strip():
            raise Problem(422, f"{field}[{i}] is an empty text", f"{field}[{i}]")


async def _results(futures: list) -> list:
    try:
        return list(await asyncio.gather(*futures))
    except BertkitError as e:
        raise Problem(422, str(e)) from None
    except Exception as e:  # noqa: BLE001 - the model failed on this batch: say so, keep serving
        raise Problem(500, f"model error: {type(e).__name__}: {e}", kind="server_error") from None


# ---- GET /health, /info ---------------------------------------------------------------------------


def _info(api: Api) -> dict:
    backend, batcher = api.backend, api.batcher
    out = {"model_id": api.model_name, **backend.describe(), "max_client_batch_size": api.max_client_batch_size,
           "max_batch_size": batcher.max_batch_size, "max_wait_ms": batcher.max_wait * 1000,
           "max_queue": batcher.max_queue, "queued": batcher.queued(), "accepted": batcher.accepted,
           "batches_run": batcher.batches_run, "inputs_run": batcher.inputs_run}
    if backend.head == "encoder":
        out["embedding"] = {"dimensions": backend.hidden_size, "pooling": backend.recipe.pooling,
                            "normalize": backend.recipe.normalize, "max_input_length": backend.embedding_max_len}
    return out


def _add_info_routes(app: FastAPI, api: Api) -> None:
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return _info(api)


# ---- POST /v1/embeddings, /embed ------------------------------------------------------------------


def _openai_format(body: dict, hidden_size: int) -> str:
    """/v1/embeddings' `encoding_format`, after checking it and `dimensions`."""
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise Problem(422, f"field 'encoding_format' must be 'float' or 'base64', got {fmt!r}", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and dims != hidden_size:
        raise Problem(422, f"field 'dimensions' is {dims!r}; this model's vectors have {hidden_size}",
                      "dimensions")
    return fmt


def _openai_response(vectors: list, fmt: str, encodings: list, model: str) -> JSONResponse:
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() if fmt == "base64" else v.tolist()}
            for i, v in enumerate(vectors)]
    n = sum(len(e) for e in encodings)
    return JSONResponse({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


def _tei_flags(body: dict) -> dict:
    """/embed's `normalize` (default true) and `truncate` (default false)."""
    flags = {}
    for flag, default in (("normalize", True), ("truncate", False)):
        flags[flag] = body.get(flag, default)
        if not isinstance(flags[flag], bool):
            raise Problem(422, f"field {flag!r} must be true or false, got {_json_type(flags[flag])}", flag)
    return flags


def _add_embedding_routes(app: FastAPI, api: Api) -> None:
    backend = api.backend

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request):
        with api.batcher.arriving():
            body = await api.body_of(request)
            api.need_head("/v1/embeddings", "encoder")
            fmt = _openai_format(body, backend.hidden_size)
            texts = api.texts_of(body, "input")
            encodings = api.encode("input", texts, backend.embedding_max_len)
            futures = api.submit(encodings, "embed")
        vectors = await _results(futures)
        return _openai_response(vectors, fmt, encodings, body.get("model") or api.model_name)

    @app.post("/embed")
    async def tei_embed(request: Request):
        with api.batcher.arriving():
            body = await api.body_of(request)
            api.need_head("/embed", "encoder")
            flags = _tei_flags(body)
            texts = api.texts_of(body, "inputs")
            encodings = api.encode("inputs", texts, backend.embedding_max_len, truncate=flags["truncate"])
            futures = api.submit(encodings, "embed" if flags["normalize"] else "embed_raw")
        vectors = await _results(futures)
        if flags["normalize"] and not backend.recipe.normalize:
            vectors = [v / max(float(np.linalg.norm(v)), 1e-12) for v in vectors]
        return JSONResponse([v.tolist() for v in vectors])


# ---- POST /predict, /answer, /fill-mask -----------------------------------------------------------


def _check_question(body: dict, max_context_chars: int) -> None:
    """/answer's `question` and `context`: non-blank strings, the context within the limit."""
    for field in ("question", "context"):
        if field not in body:
            raise Problem(422, f"field {field!r} is missing", field)
        if not isinstance(body[field], str):
            raise Problem(422, f"field {field!r} must be a string, got {_json_type(body[field])}", field)
        if not body[field].strip():
            raise Problem(422, f"field {field!r} is empty", field)
    if len(body["context"]) > max_context_chars:
        raise Problem(413, f"field 'context' has {len(body['context'])} characters, more than the limit of "
                           f"{max_context_chars}", "context")


def _fill_mask_top_k(body: dict, items: list) -> int:
    """/fill-mask's `top_k` (default 5), after checking that every input has a [MASK]."""
    for i, text in enumerate(items):
        if "[MASK]" not in text:
            raise Problem(422, f"inputs[{i}] has no [MASK] token", f"inputs[{i}]")
    top_k = body.get("top_k", 5)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 100:
        raise Problem(422, f"field 'top_k' must be an integer from 1 to 100, got {top_k!r}", "top_k")
    return top_k


def _add_task_routes(app: FastAPI, api: Api) -> None:
    backend = api.backend

    @app.post("/predict")
    async def predict(request: Request):
        with api.batcher.arriving():
            body = await api.body_of(request)
            api.need_head("/predict", "classification", "regression")
            items = api.texts_of(body, "inputs", pairs=True)
            futures = api.submit(api.encode("inputs", items, backend.max_len), "predict")
        return JSONResponse(await _results(futures))

    @app.post("/answer")
    async def answer(request: Request):
        body = await api.body_of(request)
        api.need_head("/answer", "question_answering")
        _check_question(body, api.max_context_chars)
        return await api.call(lambda: backend.answer(body["question"], body["context"]))

    @app.post("/fill-mask")
    async def fill_mask(request: Request):
        body = await api.body_of(request)
        items = api.texts_of(body, "inputs")
        top_k = _fill_mask_top_k(body, items)
        return await api.call(lambda: backend.fill_mask(items, top_k))
