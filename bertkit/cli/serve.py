"""`bertkit serve`: embeddings, predictions and answers over HTTP, with dynamic batching."""

import os
import threading

from .options import add_device_arguments, add_threads_argument, apply_threads

MAX_WORKERS = 8  # batches in flight at once at most (each holds its activations)
API_KEY_ENV = "BERTKIT_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(p):
    p.add_argument("--model", required=True, help="a checkpoint directory or name, or an export directory (bertkit export)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--backend", choices=("torch", "onnx"),
                   help="torch: bertkit's PyTorch model (default for a checkpoint); onnx: ONNX Runtime (a checkpoint "
                        "is exported and verified at start-up). An export directory runs in its own format")
    p.add_argument("--quantize", choices=("int8",),
                   help="int8 (torch: bertkit's recipe, per-channel weights and per-token activations, bertkit/cpu/int8.py; "
                        "onnx: the int8 export)")
    p.add_argument("--max-batch-size", type=int, default=32, help="inputs per forward pass (1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long the first input waits for others to join its batch")
    p.add_argument("--max-queue", type=int, default=1024, help="inputs waiting at most; beyond it requests get 503")
    p.add_argument("--max-client-batch-size", type=int, default=32, help="inputs one request may send")
    add_threads_argument(p, help="CPU threads for the model (default: torch's choice)")
    p.add_argument("--api-key", help=f"requests to any route but /health need 'Authorization: Bearer KEY', else 401 "
                                     f"(default: ${API_KEY_ENV}; unset: no key; the variable keeps it out of ps)")
    add_device_arguments(p)  # a checkpoint on --backend torch; exports, onnx and int8 run on the CPU in their own precision


def run(args):
    import sys

    from ..errors import BertkitError

    for flag in ("max_batch_size", "max_queue", "max_client_batch_size"):
        if getattr(args, flag) < 1:
            raise BertkitError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.max_wait_ms < 0:
        raise BertkitError(f"--max-wait-ms must not be negative, got {args.max_wait_ms}")
    api_key = api_key_of(args.api_key, os.environ)
    from ..serve.backends import placement

    # a device or precision this machine or backend cannot run: one line, before anything is loaded
    device, precision = placement(args.model, args.backend, args.quantize, args.device, args.precision)
    from importlib.util import find_spec

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if find_spec(name) is None]
    if missing:
        raise BertkitError(f"bertkit serve needs {', '.join(missing)}: pip install 'bertkit[serve]'")
    import uvicorn

    apply_threads(args)
    from ..cpu.threads import configure_threads, follows_machine
    from ..serve.app import create_app
    from ..serve.backends import load_backend
    from ..serve.batcher import DynamicBatcher

    def log(msg):
        print(f"bertkit serve: {msg}", file=sys.stderr, flush=True)

    backend = _on_a_passing_thread(lambda: load_backend(args.model, args.backend, threads=args.threads,
                                                        quantize=args.quantize, log=log, device=device,
                                                        precision=precision))
    # torch on a CPU whose thread count bertkit chooses: batches run side by side under load (batcher.py);
    # on a GPU one worker (concurrent_forwards is False there)
    workers = 1 if args.threads or not backend.concurrent_forwards or not follows_machine() else \
        min(MAX_WORKERS, configure_threads().threads)
    batcher = DynamicBatcher(backend.forward, args.max_batch_size, args.max_wait_ms, args.max_queue, workers=workers)
    app = create_app(backend, batcher, str(args.model), max_client_batch_size=args.max_client_batch_size,
                     api_key=api_key)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    log(f"{backend.head} model on {backend.name} ({backend.device}, {backend.precision}), batches of up to {args.max_batch_size} "
        f"(wait {args.max_wait_ms:g} ms, {workers} at a time under load); listening on http://{args.host}:{args.port}")
    if access := _access_line(api_key, args.host):
        log(access)
    try:
        server.run()  # SIGTERM / Ctrl-C: stop accepting, finish the accepted requests, exit
    except SystemExit as e:  # uvicorn exits 1 when it cannot bind the port
        if e.code:
            raise BertkitError(f"cannot listen on {args.host}:{args.port} (is the port taken?)") from None
    finally:
        batcher.close()
    log("stopped")
    return 0


def api_key_of(flag: str | None, environ) -> str | None:
    """The API key: --api-key, else $BERTKIT_API_KEY (set but empty counts as unset), else None."""
    key, source = (flag, "--api-key") if flag is not None else (environ.get(API_KEY_ENV) or None, API_KEY_ENV)
    if key is not None and not (key and key.isascii() and key.isprintable() and " " not in key):
        from ..errors import BertkitError

        raise BertkitError(f"{source}: the key must be one word of printable ASCII (it travels in an HTTP header, "
                           "'Authorization: Bearer KEY')")
    return key


def _access_line(api_key: str | None, host: str) -> str | None:
    """What the startup log says about access (never the key itself); on localhost without a key, nothing."""
    if api_key is not None:
        return "API key required on every route but /health (Authorization: Bearer); GET /metrics for Prometheus"
    if host not in LOOPBACK:
        return f"no API key: anyone who can reach {host} may use this server (--api-key or ${API_KEY_ENV} to require one)"
    return None


def _on_a_passing_thread(fn):
    """Run `fn` on a thread that then ends, and return its result (or raise its error).

    PyTorch's OpenMP worker threads belong to the thread that first ran a parallel op. Loading the
    model on the main thread would leave the main thread's team alive beside the batcher thread's,
    and with more OpenMP threads than cores GNU OpenMP stops spin-waiting between ops: one sentence
    then took 13.3 ms instead of 5.5 ms (2 threads). A team whose thread has ended is released."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
            box["error"] = e

    thread = threading.Thread(target=target, name="bertkit-load")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
