"""CPU inference engines: bertkit against transformers, ONNX Runtime, OpenVINO and CTranslate2, same weights.

all-minilm-l6-v2 (the HF-layout checkpoint bertkit's zoo name resolves to), SST-2 dev tokenized once
by bertkit's tokenizer; every engine gets the same token ids in the same padded batches:
  bertkit            bertkit.load + cpu.optimize.for_inference (what `bertkit serve`, `embed`, `predict` run on
                     the CPU in fp32: the compiled encoder with its own GEMMs, padding skipped)
  bertkit-layers     optimize_for_cpu(native=False): the layer-by-layer path alone, no compiled encoder
  bertkit-bf16       for_inference in bf16, under torch.autocast("cpu", bfloat16), as `--precision bf16`: the
                     compiled encoder's AVX512_BF16 GEMMs
  bertkit-int8       for_inference with quantize="int8" (bertkit/cpu/int8.py: per-channel weights, per-token
                     activations), as `--quantize int8`
  bertkit-onnx       `bertkit export --format onnx` on ONNX Runtime
  bertkit-onnx-int8  `bertkit export --format onnx --quantize int8` on ONNX Runtime
  transformers       transformers' BertModel, PyTorch eager mode, fp32, its default attention (SDPA)
  ort                transformers' BertModel -> torch.onnx.export -> onnxruntime.transformers.optimizer's
                     BERT fusions, ONNX Runtime (the graph bench_onnx.py calls ort-transformers)
  openvino           the same unfused ONNX file compiled by OpenVINO with its default precision hint
                     (bf16 on CPUs with AVX512_BF16 or AMX: the table's precision column says which ran)
  openvino-f32       the same with INFERENCE_PRECISION_HINT f32
  ct2, ct2-int8      CTranslate2 Encoder on the checkpoint converted by TransformersConverter (float32
                     weights), compute_type float32 / int8
The bertkit PyTorch engines (bertkit, -layers, -bf16, -int8) get the valid lengths and skip padded
tokens; CTranslate2 gets the
lengths, and its encoder drops padding outside attention (OpenNMT/CTranslate2#251); every other engine
(transformers, the ONNX graphs on ONNX Runtime and OpenVINO) computes the padded batch under its mask.

Each engine runs in its own worker process (a second runtime in one process distorts timings): the
driver builds what an engine needs (ONNX files, the CTranslate2 conversion) in a short-lived process
first, then starts the workers one at a time; each loads its engine, returns its parity outputs and
warms up. The driver then sends "one pass at batch size B" to one worker at a time, round-robin, the
order rotating every round, so the engines are interleaved in time and never compute together (with
--pause seconds between passes, for the last worker's spinning threads to sleep). Batch
1 is the first --limit-batch1 sentences one at a time; other sizes are all sentences in file order in
padded batches. The figure is real (non-padding) tokens / the median pass over --rounds rounds.
Parity: the last hidden states of the first 16 sentences (batch 1, real tokens) against transformers
fp32 (max abs diff; fp32 engines must be within 1e-4, else FAIL) and the cosine of the mean-pooled
sentence vectors of the batch-32 pass (mean and worst over all sentences).

Workers for engines that import in this interpreter run in it (bertkit's .venv); the others (OpenVINO,
CTranslate2) run in --engines-python, by default .venv-engines/bin/python (`make engines-venv`).
transformers always loads first, for the parity reference (and leaves if not asked for). All the
workers stay alive until the end: about 5 GB of memory for all twelve engines; exports, conversions and
each worker's log go to --workdir (default a temporary directory).

    make engines-venv
    .venv/bin/python benchmarks/bench_engines.py --threads 2 --json runs/engines.json
    .venv/bin/python benchmarks/bench_engines.py --engines bertkit ort openvino ct2 --batch-sizes 1
    .venv/bin/python benchmarks/bench_engines.py --rounds 1 --limit-batch1 10 --limit 64   # smoke test
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_engines.py   # busy machine: no spinning threads
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # the only third-party import at the top: a worker imports its own engine's runtime only

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# engine -> the modules its build and its worker import (which decides the interpreter that runs it)
ENGINES = {
    "bertkit": ("torch", "bertkit"),
    "bertkit-layers": ("torch", "bertkit"),
    "bertkit-bf16": ("torch", "bertkit"),
    "bertkit-int8": ("torch", "bertkit"),
    "bertkit-onnx": ("torch", "bertkit", "onnx", "onnxruntime"),
    "bertkit-onnx-int8": ("torch", "bertkit", "onnx", "onnxruntime"),
    "transformers": ("torch", "transformers"),
    "ort": ("torch", "bertkit", "transformers", "onnx", "onnxruntime"),
    "openvino": ("torch", "bertkit", "transformers", "onnx", "onnxruntime", "openvino"),
    "openvino-f32": ("torch", "bertkit", "transformers", "onnx", "onnxruntime", "openvino"),
    "ct2": ("torch", "transformers", "ctranslate2"),
    "ct2-int8": ("torch", "transformers", "ctranslate2"),
}
REFERENCES = ("ort", "openvino", "openvino-f32", "ct2", "ct2-int8")  # the "vs fastest reference" columns
REFERENCE = "transformers"  # parity is measured against its fp32 outputs
# engine -> the file its build step writes, under the work directory's artifacts
ARTIFACTS = {"ort": "hf.opt.onnx", "openvino": "hf.onnx", "openvino-f32": "hf.onnx",
             "bertkit-onnx": "bertkit-onnx/model.onnx", "bertkit-onnx-int8": "bertkit-onnx-int8/model.onnx",
             "ct2": "ct2/model.bin", "ct2-int8": "ct2/model.bin"}
PARITY_SENTENCES, PARITY_BATCH, FP32_TOLERANCE = 16, 32, 1e-4
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2", help="zoo name or checkpoint directory (HF layout)")
    p.add_argument("--data", type=Path, help="a TSV whose first column is a sentence (default SST-2 dev)")
    p.add_argument("--engines", nargs="+", choices=list(ENGINES), metavar="ENGINE",
                   help=f"some of {', '.join(ENGINES)} (default: all that import somewhere)")
    p.add_argument("--engines-python", type=Path, help="interpreter for engines that do not import here "
                   "(default .venv-engines/bin/python where it exists)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--limit-batch1", type=int, default=300, help="sentences in a batch-1 pass (default 300)")
    p.add_argument("--limit", type=int, help="only the first N sentences for every other pass and for parity")
    p.add_argument("--rounds", type=int, default=5, help="timed passes per engine and batch size (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pause", type=float, default=0.3, help="seconds between passes, for the last worker's "
                   "spinning threads to sleep (default 0.3)")
    p.add_argument("--workdir", type=Path, help="keep exports, conversions and worker logs here (and reuse them)")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    # the worker and build sides of the same script (started by the driver, not by hand)
    p.add_argument("--worker", choices=list(ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--build", choices=list(ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--parity-only", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- build step: run once per artifact, in the engine's interpreter, in its own process ------------------

def build(name: str, model_dir: Path, art: Path) -> None:
    art.mkdir(parents=True, exist_ok=True)
    if name in ("ort", "openvino", "openvino-f32"):
        from transformers import BertConfig

        from bench_onnx import transformers_onnx

        transformers_onnx(str(model_dir), art, BertConfig.from_pretrained(model_dir))  # hf.onnx and hf.opt.onnx
    elif name.startswith("bertkit-onnx"):
        from bertkit.export import export

        quantize = "int8" if name.endswith("int8") else None
        m = export(model_dir, "onnx", art / name, quantize=quantize)
        print(f"{name}: fusions {m['onnxruntime_fusions']}; export's verification {m['verification']}")
    elif name.startswith("ct2"):
        from ctranslate2.converters import TransformersConverter

        # float32 weights: ct2-int8 quantizes them as it loads (compute_type int8), so one conversion serves both
        TransformersConverter(str(model_dir)).convert(str(art / "ct2"), force=True)


def artifacts(workdir: Path, model_dir: Path) -> Path:
    """Where a checkpoint's exports and conversions live in the work directory (per checkpoint: --workdir is reused)."""
    return workdir / "artifacts" / re.sub(r"[^\w.-]+", "_", str(Path(model_dir).resolve()).strip("/"))[-120:]


# ---- worker side: one engine per process -------------------------------------------------------------------

class Batch:
    """One padded batch as the driver tokenized it (NumPy, int64)."""

    def __init__(self, ids, segs, lengths):
        self.np_ids, self.np_segs, self.lengths = ids, segs, lengths
        self.np_mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)


class Engine:
    """prepare(Batch) -> the engine's own inputs (untimed); forward(prepared) -> last hidden states, float32 NumPy."""

    def __init__(self, prepare, forward, precision: str, versions: dict, note: str = ""):
        self.prepare, self.forward, self.precision, self.versions, self.note = prepare, forward, precision, versions, note


def load_bertkit(name: str, model_dir: Path, threads: int) -> Engine:
    import torch

    import bertkit
    from bertkit.cpu import optimize_for_cpu
    from bertkit.cpu.optimize import for_inference, inference_path
    from bertkit.device import resolve_precision
    from bertkit.export.verify import torch_outputs
    from bertkit.tokenizer import EncodedBatch

    torch.set_num_threads(threads)
    model, precision, note = bertkit.load(model_dir).eval(), "fp32", ""
    cpu = torch.device("cpu")
    if name == "bertkit-layers":
        optimize_for_cpu(model, native=False)
        note = "optimize_for_cpu(native=False): layer-by-layer path"
    else:
        if name == "bertkit-bf16":
            precision = resolve_precision("bf16", cpu)  # refuses a CPU without native bf16
        quantize = "int8" if name == "bertkit-int8" else None
        note = inference_path(model.config, precision, quantize)
        model = for_inference(model, cpu, precision, quantize)

    def prepare(b):
        return EncodedBatch(torch.from_numpy(b.np_ids), torch.from_numpy(b.np_segs), torch.from_numpy(b.lengths), [])

    def forward(batch):  # serve's own call: inference_mode, autocast in `precision`, float32 arrays out
        return torch_outputs(model, "encoder", batch, precision)[0]

    versions = {"torch": torch.__version__, "bertkit": bertkit.__version__}
    # int8: its forward stays fp32 (no autocast) around the int8 Linears
    return Engine(prepare, forward, "int8" if name == "bertkit-int8" else precision, versions, note)


def load_transformers(model_dir: Path, threads: int) -> Engine:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.BertModel.from_pretrained(model_dir).eval()

    def prepare(b):
        return {"input_ids": torch.from_numpy(b.np_ids), "token_type_ids": torch.from_numpy(b.np_segs),
                "attention_mask": torch.from_numpy(b.np_mask)}

    def forward(feeds):
        with torch.inference_mode():
            return model(**feeds).last_hidden_state.numpy()

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    return Engine(prepare, forward, "fp32", versions, f"attention {getattr(model.config, '_attn_implementation', '?')}")


def load_ort(path: Path, threads: int) -> Engine:
    import onnxruntime

    from bench_onnx import ort_session

    session = ort_session(path, threads)
    names = [i.name for i in session.get_inputs()]

    def prepare(b):
        feeds = {"input_ids": b.np_ids, "token_type_ids": b.np_segs, "attention_mask": b.np_mask}
        return {n: feeds[n] for n in names}

    precision = "int8" if "int8" in path.parent.name else "fp32"
    return Engine(prepare, lambda feeds: session.run(None, feeds)[0], precision, {"onnxruntime": onnxruntime.__version__},
                  f"{path.parent.name}/{path.name}" if path.name == "model.onnx" else path.name)


def load_openvino(name: str, path: Path, threads: int) -> Engine:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads}
    if name == "openvino-f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output("last_hidden_state")

    def prepare(b):
        return {"input_ids": b.np_ids, "attention_mask": b.np_mask, "token_type_ids": b.np_segs}

    def forward(feeds):
        return request.infer(feeds)[output]  # a copy, as ONNX Runtime returns

    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what it compiled to: f32, bf16, f16
    return Engine(prepare, forward, {"f32": "fp32"}.get(hint, hint), {"openvino": ov.__version__},
                  f"INFERENCE_PRECISION_HINT {hint}")


def load_ct2(name: str, path: Path, threads: int) -> Engine:
    import ctranslate2

    compute = "int8" if name == "ct2-int8" else "float32"
    encoder = ctranslate2.Encoder(str(path.parent), device="cpu", compute_type=compute, intra_threads=threads,
                                  inter_threads=1)

    def prepare(b):  # the padded ids as a dense int32 array with the lengths: CTranslate2's fastest input
        return (ctranslate2.StorageView.from_array(b.np_ids.astype(np.int32)),
                ctranslate2.StorageView.from_array(b.lengths.astype(np.int32)), b.np_segs.tolist())

    def forward(inputs):
        ids, lengths, segs = inputs
        return np.asarray(encoder.forward_batch(ids, lengths, segs).last_hidden_state)

    shown = {"float32": "fp32", "int8_float32": "int8"}.get(encoder.compute_type, encoder.compute_type)
    return Engine(prepare, forward, shown, {"ctranslate2": ctranslate2.__version__}, f"compute_type {encoder.compute_type}")


def load_engine(name: str, model_dir: Path, art: Path, threads: int) -> Engine:
    if name == "transformers":
        return load_transformers(model_dir, threads)
    if name in ("ort", "bertkit-onnx", "bertkit-onnx-int8"):
        return load_ort(art / ARTIFACTS[name], threads)
    if name.startswith("openvino"):
        return load_openvino(name, art / ARTIFACTS[name], threads)
    if name.startswith("ct2"):
        return load_ct2(name, art / ARTIFACTS[name], threads)
    return load_bertkit(name, model_dir, threads)


def read_sets(path: Path) -> dict[str, list[Batch]]:
    """tokens.npz -> {set name: [Batch, ...]} (keys are set/index/field)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    sets: dict[str, list[Batch]] = {}
    for key in sorted({k.rsplit("/", 1)[0] for k in arrays}, key=lambda k: (k.split("/")[0], int(k.split("/")[1]))):
        sets.setdefault(key.split("/")[0], []).append(Batch(*(arrays[f"{key}/{f}"] for f in ("ids", "segs", "lengths"))))
    return sets


def one_pass(engine: Engine, prepared: list) -> float:
    start = time.perf_counter()
    for inputs in prepared:
        engine.forward(inputs)
    return time.perf_counter() - start


def parity_outputs(engine: Engine, sets, prepared) -> dict[str, np.ndarray]:
    """The first sentences' hidden states (one at a time, real tokens) and every sentence's mean-pooled vector."""
    hidden = [engine.forward(p)[0, :int(b.lengths[0])] for b, p in zip(sets["hidden"], prepared["hidden"])]
    pooled = []
    for b, p in zip(sets["pooled"], prepared["pooled"]):
        h, mask = engine.forward(p).astype(np.float64), b.np_mask[:, :, None]
        pooled.append((h * mask).sum(1) / mask.sum(1))
    return {"hidden": np.concatenate(hidden).astype(np.float32), "pooled": np.concatenate(pooled)}


def worker(args) -> None:
    """Load one engine, report parity outputs, warm up, then time passes on request until stdin closes."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output (exporters, runtimes) goes to the log, never into the reply pipe
    try:
        engine = load_engine(args.worker, args.model_dir, artifacts(args.workdir, args.model_dir), args.threads)
        if "torch" in sys.modules:  # also where torch is imported but idle (ONNX Runtime's helpers)
            sys.modules["torch"].set_num_threads(args.threads)
        sets = read_sets(args.workdir / "tokens.npz")
        if args.parity_only:
            sets = {k: v for k, v in sets.items() if k in ("hidden", "pooled")}
        prepared = {k: [engine.prepare(b) for b in v] for k, v in sets.items()}
        out = args.workdir / f"parity-{args.worker}.npz"
        np.savez(out, **parity_outputs(engine, sets, prepared))
        for key in prepared:
            if key.startswith("time-"):
                one_pass(engine, prepared[key])  # warm-up: one untimed pass at every batch size
        import resource

        reply.write(json.dumps({"precision": engine.precision, "versions": engine.versions, "note": engine.note,
                                "parity": str(out), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}) + "\n")
    except Exception as e:  # noqa: BLE001 -- any failure to load is reported to the driver, which goes on
        import traceback

        traceback.print_exc()
        last = ([line for line in str(e).splitlines() if line.strip()] or [""])[-1]  # OpenVINO puts the cause last
        reply.write(json.dumps({"error": f"{type(e).__name__}: {last}"[:400]}) + "\n")
        return
    for line in sys.stdin:
        reply.write(json.dumps({"seconds": one_pass(engine, prepared[f"time-{json.loads(line)['batch']}"])}) + "\n")


# ---- driver side ------------------------------------------------------------------------------------------

class Worker:
    """One engine's worker process, spoken to in JSON lines over its stdin and stdout."""

    def __init__(self, name: str, python: str, argv: list[str], log: Path):
        self.name, self.log = name, log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", name, *argv],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)

    def ask(self, message: dict | None = None) -> dict:
        if message is not None:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        answer = json.loads(line) if line else {"error": f"worker exited with code {self.proc.wait()}"}
        if "error" in answer:
            self.close()
            tail = "\n    ".join(self.log.read_text(errors="replace").strip().splitlines()[-6:])
            raise RuntimeError(f"{answer['error']}\n    (log {self.log}:)\n    {tail}")
        return answer

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def importable(python: str, modules: set[str]) -> set[str]:
    """Which of `modules` import in `python` (found, not imported: cheap)."""
    if python == sys.executable:
        return {m for m in modules if importlib.util.find_spec(m) is not None}
    code = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    try:
        found = subprocess.run([python, "-c", code, *sorted(modules)], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return set()
    return set(found.stdout.split())


def pick_interpreters(args) -> tuple[dict[str, str], dict[str, str]]:
    """({engine: python that runs it}, {engine: why it does not run}) for the engines asked for (or all)."""
    default = HERE.parent / ".venv-engines" / "bin" / "python"
    other = args.engines_python or (default if default.exists() else None)
    everything = set().union(*ENGINES.values())
    found = {sys.executable: importable(sys.executable, everything)}
    if other:
        found[str(other)] = importable(str(other), everything)
    chosen, skipped = {}, {}
    for name in args.engines or ENGINES:
        python = next((py for py, mods in found.items() if set(ENGINES[name]) <= mods), None)
        if python is None:
            skipped[name] = f"needs {', '.join(ENGINES[name])}: not all import in {' or '.join(found)}"
        elif name == "bertkit-bf16" and not args.engines and not native_bf16():
            skipped[name] = "this CPU has no native bf16 (AVX512_BF16 or AMX); ask for it by name to see the refusal"
        else:
            chosen[name] = python
    return chosen, skipped


def native_bf16() -> bool:
    from bertkit.device import native_bf16_cpu

    return native_bf16_cpu()


def write_tokens(args, model_dir: Path, path: Path) -> dict[str, int]:
    """Tokenize once (bertkit's tokenizer, bench_onnx's batching) and save every set of padded batches;
    returns the real tokens of each timed set."""
    from bench_encoder import DEFAULT_DATA, read_sentences
    from bench_onnx import make_batches
    from bertkit.tokenizer import BertTokenizer

    tok = BertTokenizer.from_dir(model_dir)
    everything = read_sentences(args.data or DEFAULT_DATA, None)
    sentences = everything[:args.limit] if args.limit else everything
    sets = {f"time-{b}": make_batches(tok, everything[:args.limit_batch1] if b == 1 else sentences, b)
            for b in args.batch_sizes}
    sets["hidden"] = make_batches(tok, everything[:PARITY_SENTENCES], 1)
    sets["pooled"] = make_batches(tok, sentences, PARITY_BATCH)
    arrays = {f"{k}/{i}/{f}": a for k, v in sets.items() for i, b in enumerate(v)
              for f, a in (("ids", b.np_ids), ("segs", b.np_segs), ("lengths", b.valid_lengths.numpy()))}
    np.savez(path, **arrays)
    print(f"data         {args.data or DEFAULT_DATA}: {len(sentences)} sentences (batch 1: the first "
          f"{min(args.limit_batch1, len(everything))}); parity on {len(sentences)} pooled, {PARITY_SENTENCES} hidden")
    return {k: sum(int(b.valid_lengths.sum()) for b in v) for k, v in sets.items() if k.startswith("time-")}


def start_workers(args, chosen: dict[str, str], model_dir: Path, workdir: Path) -> tuple[dict, dict, dict]:
    """Build (where needed) and start every worker, one at a time; ({name: Worker}, {name: ready reply}, {name: error})."""
    argv = ["--model-dir", str(model_dir), "--workdir", str(workdir), "--threads", str(args.threads)]
    workers, ready, failed = {}, {}, {}
    names = [REFERENCE, *(n for n in chosen if n != REFERENCE)]  # the parity reference loads first, in any case
    for name in names:
        python = chosen.get(name, sys.executable)
        try:
            artifact = artifacts(workdir, model_dir) / ARTIFACTS.get(name, "")
            if name in ARTIFACTS and not artifact.exists():
                print(f"building     {name} ...", flush=True)
                with open(workdir / f"build-{name}.log", "w") as log:
                    done = subprocess.run([python, str(Path(__file__).resolve()), "--build", name, *argv], stderr=log)
                if done.returncode:
                    raise RuntimeError(f"build failed (log {workdir / f'build-{name}.log'})")
            extra = [] if name in chosen else ["--parity-only"]
            workers[name] = Worker(name, python, argv + extra, workdir / f"worker-{name}.log")
            ready[name] = workers[name].ask()
            print(f"loaded       {name:<18} {ready[name]['precision']:<10} peak RSS {ready[name]['peak_rss_mb']} MB"
                  f"{'  ' + ready[name]['note'] if ready[name]['note'] else ''}", flush=True)
        except RuntimeError as e:
            failed[name] = str(e)
            workers.pop(name, None)
            print(f"FAILED       {name}: {e}", flush=True)
        if name not in chosen and name in workers:
            workers.pop(name).close()  # the reference was only wanted for parity
    return workers, ready, failed


def compare(reference: dict, got: dict) -> dict[str, float]:
    a, b = reference["pooled"].astype(np.float64), got["pooled"].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"max_abs_diff": float(np.abs(reference["hidden"].astype(np.float64) - got["hidden"]).max()),
            "mean_cos": float(cos.mean()), "worst_cos": float(cos.min())}


def parity(ready: dict) -> dict[str, dict]:
    if REFERENCE not in ready:
        return {}
    load = lambda n: dict(np.load(ready[n]["parity"]))  # noqa: E731
    reference = load(REFERENCE)
    return {n: compare(reference, load(n)) for n in ready}


def time_workers(workers: dict, sizes: list[int], rounds: int, pause: float) -> tuple[dict, dict]:
    """Round-robin passes, one worker computing at a time, the order rotating each round."""
    times, failed = {n: {b: [] for b in sizes} for n in workers}, {}
    for size in sizes:
        for r in range(rounds):
            names = [n for n in workers if n not in failed]
            for name in names[r % len(names):] + names[:r % len(names)] if names else []:
                # the previous worker's idle threads spin on a core for a while after its pass (OpenMP's
                # and ONNX Runtime's wait policies): let them go to sleep before the next pass starts
                time.sleep(pause)
                try:
                    times[name][size].append(workers[name].ask({"batch": size})["seconds"])
                except RuntimeError as e:
                    failed[name] = str(e)
                    print(f"FAILED       {name} during batch {size}: {e}", flush=True)
            print(f"timed        batch {size}, round {r + 1}/{rounds}", flush=True)
    return times, failed


def precision_class(precision: str) -> str:
    return "int8" if "int8" in precision else "bf16" if "bf16" in precision or "bfloat16" in precision else "fp32"


def machine(args) -> list[str]:
    """The lines that say where and when the numbers were taken."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    field = lambda key: (re.search(rf"^{key}:\s*(.+)$", lscpu, re.M) or [None, "?"])[1].strip()  # noqa: E731
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        flags = set((re.search(r"^flags\s*:(.*)$", cpuinfo, re.M) or [None, ""])[1].split())
    except OSError:
        flags = set()
    return [f"cpu          {field('Model name')} ({field('Vendor ID')}), {os.cpu_count()} logical CPUs",
            f"cpu flags    {' '.join(f for f in FLAGS if f in flags)}; without {' '.join(f for f in FLAGS if f not in flags) or '-'}",
            f"date         {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"threads      {args.threads} per engine (torch.set_num_threads, ORT intra_op_num_threads, OpenVINO "
            f"INFERENCE_NUM_THREADS, CT2 intra_threads); OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
            f"load average {os.getloadavg()[0]:.1f}"]


def table(ready: dict, rates: dict, par: dict, sizes: list[int]) -> list[str]:
    """The markdown table; each speed also as a ratio to the fastest reference engine of its precision class."""
    head = ["engine", "precision"] + [c for b in sizes for c in (f"batch {b} tok/s", "vs fastest reference")]
    rows = [head + ["max abs diff", "mean cos", "worst cos"]]
    for name in (n for n in ENGINES if n in rates):
        cls = precision_class(ready[name]["precision"])
        row = [name, ready[name]["precision"]]
        for b in sizes:
            refs = {r: rates[r][b] for r in REFERENCES if rates.get(r, {}).get(b)
                    and precision_class(ready[r]["precision"]) == cls}
            best, rate = max(refs, key=refs.get, default=None), rates[name].get(b)
            row += [f"{rate:,.0f}" if rate else "-", f"{rate / refs[best]:.2f}x {best}" if rate and best else "-"]
        p = par.get(name)
        if p:
            fail = " FAIL" if cls == "fp32" and p["max_abs_diff"] > FP32_TOLERANCE else ""
            row += [f"{p['max_abs_diff']:.1e}{fail}", f"{p['mean_cos']:.6f}", f"{p['worst_cos']:.6f}"]
        else:
            row += ["-"] * 3
        rows.append(row)
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    return lines[:1] + ["|" + "|".join("---" for _ in head + [0, 0, 0]) + "|"] + lines[1:]


def report(args, model_dir, chosen, ready, par, times, tokens, problems) -> dict:
    rates = {n: {b: tokens[f"time-{b}"] / statistics.median(ts) for b, ts in by.items() if ts} for n, by in times.items()}
    print("\nengines      (what each imported, and the interpreter it ran in)")
    for name in (n for n in ENGINES if n in ready):
        versions = ", ".join(f"{k} {v}" for k, v in ready[name]["versions"].items())
        print(f"  {name:<18} {versions}; {chosen.get(name, sys.executable)}")
    print(f"\nreal tokens per second (median of {args.rounds} passes); parity vs {REFERENCE} fp32: "
          f"hidden states of the first {PARITY_SENTENCES} sentences, cosine of mean-pooled vectors\n")
    print("\n".join(table(ready, rates, par, args.batch_sizes)))
    fails = [n for n in ready if n in par and precision_class(ready[n]["precision"]) == "fp32"
             and par[n]["max_abs_diff"] > FP32_TOLERANCE]
    if fails:
        print(f"\nFAIL: fp32 engines beyond {FP32_TOLERANCE:g} max abs diff: {', '.join(fails)}")
    for name, why in problems.items():
        print(f"\nnot in the table: {name}: {why}")
    return {"model": str(model_dir), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": machine(args), "tokens": tokens,
            "engines": {n: {**ready[n], "python": chosen.get(n, sys.executable), "passes_s": times.get(n),
                            "tokens_per_s": rates.get(n), "parity": par.get(n)} for n in ready},
            "problems": problems}


def main(argv=None):
    args = parse_args(argv)
    if args.build:
        return build(args.build, args.model_dir, artifacts(args.workdir, args.model_dir))
    if args.worker:
        return worker(args)
    import bertkit

    model_dir = bertkit.resolve(args.model)
    chosen, skipped = pick_interpreters(args)
    if not chosen:
        sys.exit("bench_engines: no engine to run: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    print(f"model        {args.model} ({model_dir})")
    print("\n".join(machine(args)))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        tokens = write_tokens(args, model_dir, workdir / "tokens.npz")
        workers, ready, failed = start_workers(args, chosen, model_dir, workdir)
        try:
            par = parity(ready)
            times, lost = time_workers(workers, args.batch_sizes, args.rounds, args.pause)
        finally:
            for w in workers.values():
                w.close()
    out = report(args, model_dir, chosen, {n: r for n, r in ready.items() if n in chosen}, par, times, tokens,
                 {**skipped, **failed, **lost})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nraw numbers: {args.json}")


if __name__ == "__main__":
    main()
