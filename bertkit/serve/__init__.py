"""`bertkit serve`: an HTTP server for a checkpoint or an export directory.

backends.py  the model behind the API: bertkit's PyTorch model, or an export on ONNX Runtime / PyTorch
batcher.py   dynamic batching across concurrent requests, a bounded queue, graceful close
app.py       the FastAPI routes (OpenAI and text-embeddings-inference shapes), validation
problems.py  the JSON errors, in each route's clients' shape
access.py    the API key check and GET /metrics (Prometheus), around every route
"""
