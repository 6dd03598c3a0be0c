"""The JSON errors of the HTTP API, in the shape each route's clients expect.

OpenAI's {"error": {"message", "type", "param", "code"}} everywhere but /embed, which answers in
text-embeddings-inference's {"error", "error_type"}. The routes raise `Problem`; the access check
(access.py), which runs before any route, builds the same response with `problem_response`.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

TEI_ERROR_TYPES = {400: "Validation", 401: "Unauthorized", 413: "Validation", 422: "Validation", 503: "Overloaded"}


class Problem(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = {"Retry-After": "1"} if status == 503 and headers is None else headers


def problem_response(path: str, e: Problem) -> JSONResponse:
    if path == "/embed":
        kind = TEI_ERROR_TYPES.get(e.status, "Backend")
        return JSONResponse({"error": e.message, "error_type": kind}, status_code=e.status, headers=e.headers)
    return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.status}},
                        status_code=e.status, headers=e.headers)
