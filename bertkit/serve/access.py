"""Serving beyond localhost: an API key, and Prometheus metrics.

With a key (`bertkit serve --api-key`, or BERTKIT_API_KEY), a request to any path but /health
without `Authorization: Bearer <key>` gets 401 with `WWW-Authenticate: Bearer` and a JSON error in
the route's own shape (problems.py). The key is compared in constant time and never logged. The
check runs before routing, so unknown paths get 401 too and say nothing about the routes.

GET /metrics answers in Prometheus' text format (OpenMetrics when the scraper asks for it) from this
app's own registry, so apps in one process keep their own counts:

    bertkit_requests_total{route, status}          requests answered (401s included)
    bertkit_request_duration_seconds{route}        histogram: arrival to the last byte of the answer
    bertkit_queue_depth                            inputs waiting for a batch, read at scrape time
    bertkit_batch_size                             histogram: inputs per forward pass the batcher ran

`route` is the matched route's path template (a wrong method counts under its route); a path no
route matches counts as "unmatched", so a scanner's paths cannot add label values. prometheus_client
(the serve extra) is imported only when an app is made.
"""

from __future__ import annotations

import hmac
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.routing import Match

from .problems import Problem, problem_response

OPEN_PATHS = frozenset({"/health"})  # load balancers' probes carry no key
UNMATCHED = "unmatched"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's Prometheus registry: requests, latency, the batcher's queue and batch sizes."""

    def __init__(self, batcher):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("bertkit_requests", "HTTP requests answered, by route template and status code",
                                ("route", "status"), registry=self.registry)
        self.latency = Histogram("bertkit_request_duration_seconds", "time from a request's arrival to the last "
                                 "byte of its answer, by route template", ("route",), buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        queue = Gauge("bertkit_queue_depth", "inputs waiting for a batch", registry=self.registry)
        queue.set_function(batcher.queued)
        sizes = Histogram("bertkit_batch_size", "inputs per forward pass the batcher ran",
                          buckets=size_buckets(batcher.max_batch_size), registry=self.registry)
        batcher.on_batch = sizes.observe

    def answered(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self, accept: str | None) -> Response:
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept or "")
        return Response(encode(self.registry), headers={"Content-Type": content_type})


def size_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and with `max_batch_size`."""
    return sorted({2 ** k for k in range(max_batch_size.bit_length()) if 2 ** k < max_batch_size} | {max_batch_size})


def key_problem(authorization: bytes | None, key: bytes) -> Problem | None:
    """Why `authorization` (the raw header) does not carry `key`; None when it does."""
    if authorization is None:
        return Problem(401, "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                       kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return Problem(401, "the Authorization header must be 'Bearer <key>'", kind="authentication_error",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip(), key):
        return Problem(401, "wrong API key: the Bearer token is not this server's key", kind="authentication_error",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return None


def route_of(routes: list, scope: dict) -> str:
    """The path template of the route `scope` goes to (whatever its method), or UNMATCHED."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", UNMATCHED)
    return UNMATCHED


class AccessMiddleware:
    """ASGI middleware around the routes: the key check, then the request's count and latency."""

    def __init__(self, app, routes: list, metrics: Metrics, api_key: str | None):
        self.app, self.routes, self.metrics = app, routes, metrics
        self.key = None if api_key is None else api_key.encode()
        self.templates: dict[str, str] = {}  # path -> template, for routes without parameters (a few)

    def route(self, scope: dict) -> str:
        path = scope["path"]
        template = self.templates.get(path)
        if template is None:
            template = route_of(self.routes, scope)
            if template == path:
                self.templates[path] = template
        return template

    def refusal(self, scope: dict) -> Problem | None:
        if self.key is None or scope["path"] in OPEN_PATHS:
            return None
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        return key_problem(authorization, self.key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), None

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            problem = self.refusal(scope)
            if problem is None:
                await self.app(scope, receive, sending)
            else:
                await problem_response(scope["path"], problem)(scope, receive, sending)
        except Exception:
            status = status or 500  # the server's error middleware answers 500
            raise
        finally:
            if status is not None:  # (none: the client went away before its answer)
                self.metrics.answered(self.route(scope), status, time.perf_counter() - start)


def add_access(app: FastAPI, metrics: Metrics, api_key: str | None) -> None:
    """GET /metrics, and the key check and the metrics around every route."""
    if api_key is not None and not api_key:
        raise ValueError("api_key is empty: give a key, or None for no key check")

    @app.get("/metrics")
    async def prometheus_metrics(request: Request):
        return metrics.exposition(request.headers.get("accept"))

    app.add_middleware(AccessMiddleware, routes=app.router.routes, metrics=metrics, api_key=api_key)
