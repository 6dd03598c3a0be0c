"""Encoder inference: bertkit against ONNX Runtime, same all-minilm-l6-v2 weights, batch 32 and batch 1.

Contenders (all fp32 unless named int8; tokenization is done once beforehand and not timed):
  bertkit            bertkit's PyTorch BertModel (unpadded), torch.inference_mode()
  bertkit+packed     the same with MKL-packed Linear weights (bertkit.cpu.optimize_for_cpu with native=False)
  bertkit+native     bertkit+packed with the encoder in compiled kernels for unpadded inputs of up to
                     256 tokens (bertkit.cpu.optimize_for_cpu; what `bertkit serve`'s PyTorch backend
                     runs where a C++ compiler is present)
  bertkit+compile    the same under torch.compile(dynamic=True)            (with --compile)
  ort-transformers   transformers' BertModel through the standard ONNX path (torch.onnx.export, then
                     onnxruntime.transformers.optimizer's BERT fusions), ONNX Runtime
  ort-bertkit        `bertkit export --format onnx` (its fused graph), ONNX Runtime
  ort-bertkit-int8   `bertkit export --format onnx --quantize int8`, ONNX Runtime
  bertkit-int8       bertkit's PyTorch model with dynamic int8 Linear layers (unpadded)
SST-2 dev in file order (the same padded batches for everyone), interleaved passes (the order rotates
each pass) after one warm-up pass each; the figure is the median pass, in real tokens per second.
With --classifier (a fine-tuned SST-2 checkpoint) the script also scores SST-2 dev accuracy of the
classifier in fp32 and in both int8 forms.

    python benchmarks/bench_onnx.py --threads 2
    python benchmarks/bench_onnx.py --threads 2 --batch-sizes 1 --limit 300 --compile
    python benchmarks/bench_onnx.py --classifier runs/export/sst2-minilm --batch-sizes 32
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_onnx.py --threads 2   # busy machine: no spinning threads
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import bertkit
from bertkit.cpu import optimize_for_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import DEFAULT_DATA, read_sentences  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--limit", type=int, help="only the first N sentences")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="add bertkit under torch.compile (compiling takes minutes)")
    p.add_argument("--skip", nargs="*", default=[], help="contenders to leave out")
    p.add_argument("--classifier", help="a fine-tuned SST-2 checkpoint: score fp32 and int8 accuracy on --data")
    return p.parse_args(argv)


def ort_session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        # the same rule for both runtimes: idle worker threads sleep instead of spinning (a shared machine)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def transformers_onnx(directory, workdir: Path, cfg) -> Path:
    """transformers' BertModel -> ONNX (the exporter optimum and the ONNX Runtime BERT docs use) ->
    onnxruntime.transformers.optimizer with model_type bert."""
    from onnxruntime.transformers import optimizer
    from transformers import BertModel

    class Outputs(torch.nn.Module):  # plain tensors out, inputs by name as ONNX Runtime's BERT tools expect
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    model = Outputs(BertModel.from_pretrained(directory, attn_implementation="eager").eval())
    sample = (torch.ones(2, 8, dtype=torch.long),) * 3
    raw, fused = workdir / "hf.onnx", workdir / "hf.opt.onnx"
    axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, sample, str(raw), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state", "pooler_output"], dynamic_axes=axes | {"pooler_output": {0: "batch"}})
        opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size)
        opt.save_model_to_file(str(fused))
    print(f"ort-transformers fusions: { {k: v for k, v in opt.get_fused_operator_statistics().items() if v} }")
    return fused


def int8_torch(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def build_contenders(args, workdir: Path, model, directory):
    from bertkit.export import export

    feeds = lambda b: {"input_ids": b.np_ids, "token_type_ids": b.np_segs, "attention_mask": b.np_mask}  # noqa: E731
    out = {}
    out["bertkit"] = lambda b: model(b.input_ids, b.segment_ids, b.valid_lengths)
    packed = optimize_for_cpu(copy.deepcopy(model), native=False)
    out["bertkit+packed"] = lambda b: packed(b.input_ids, b.segment_ids, b.valid_lengths)
    native = optimize_for_cpu(copy.deepcopy(model))
    out["bertkit+native"] = lambda b: native(b.input_ids, b.segment_ids, b.valid_lengths)
    if args.compile:
        compiled = torch.compile(model, dynamic=True)
        out["bertkit+compile"] = lambda b: compiled(b.input_ids, b.segment_ids, b.valid_lengths)
    hf = ort_session(transformers_onnx(directory, workdir, model.config), args.threads)
    out["ort-transformers"] = lambda b: hf.run(None, {"input_ids": b.np_ids, "attention_mask": b.np_mask, "token_type_ids": b.np_segs})
    m = export(directory, "onnx", workdir / "bertkit-onnx")
    print(f"ort-bertkit fusions: {m['onnxruntime_fusions']}; verified max abs diff {m['verification']['max_abs_diff']:.2e}")
    ours = ort_session(workdir / "bertkit-onnx" / "model.onnx", args.threads)
    out["ort-bertkit"] = lambda b: ours.run(None, feeds(b))
    if "ort-bertkit-int8" not in args.skip:
        export(directory, "onnx", workdir / "bertkit-onnx-int8", quantize="int8")
        ours8 = ort_session(workdir / "bertkit-onnx-int8" / "model.onnx", args.threads)
        out["ort-bertkit-int8"] = lambda b: ours8.run(None, feeds(b))
    q = int8_torch(model)
    out["bertkit-int8"] = lambda b: q(b.input_ids, b.segment_ids, b.valid_lengths)
    return {k: v for k, v in out.items() if k not in args.skip}


def make_batches(tok, sentences, size):
    batches = []
    for i in range(0, len(sentences), size):
        b = tok(sentences[i:i + size], max_len=512)
        b.np_ids, b.np_segs, b.np_mask = b.input_ids.numpy(), b.segment_ids.numpy(), b.attention_mask.long().numpy()
        batches.append(b)
    return batches


def time_contenders(contenders, batches, passes):
    def one_pass(fn):
        start = time.perf_counter()
        for b in batches:
            fn(b)
        return time.perf_counter() - start

    for fn in contenders.values():
        one_pass(fn)  # warm-up (and, for torch.compile, compilation for the shapes seen)
    names, times = list(contenders), {n: [] for n in contenders}
    for p in range(passes):
        order = names[p % len(names):] + names[:p % len(names)]
        for n in order:
            times[n].append(one_pass(contenders[n]))
    return times


def parity(contenders, model, batches):
    """max |contender - bertkit| of the last hidden states at real tokens, first 3 batches (fp32 ones;
    bertkit+native takes its own path only for unpadded batches, so its check is at batch 1)."""
    out = {}
    for name in ("bertkit+native", "ort-transformers", "ort-bertkit"):
        if name in contenders:
            worst = 0.0
            for b in batches[:3]:
                ref = model(b.input_ids, b.segment_ids, b.valid_lengths)[0].numpy()
                got = np.asarray(contenders[name](b)[0])
                worst = max(worst, float(np.abs(ref - got)[b.np_mask.astype(bool)].max()))
            out[name] = worst
    return out


def accuracy(args, workdir, sentences_labels):
    from bertkit.export import ExportedModel, export

    texts, gold = zip(*sentences_labels)
    clf = bertkit.load(args.classifier)
    index = {l: i for i, l in enumerate(clf.labels)}
    gold = np.array([index[g] for g in gold])

    def score(fn):
        preds = np.zeros(len(texts), dtype=int)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for s in range(0, len(order), 32):
            rows = order[s:s + 32]
            b = make_batches(clf.tokenizer, [texts[i] for i in rows], 32)[0]
            preds[rows] = np.asarray(fn(b)).argmax(-1)
        return float((preds == gold).mean())

    export(args.classifier, "onnx", workdir / "clf-int8", quantize="int8")
    onnx8 = ExportedModel(workdir / "clf-int8", threads=args.threads)
    q = int8_torch(clf)
    with torch.inference_mode():
        results = {
            "bertkit fp32": score(lambda b: clf(b.input_ids, b.segment_ids, b.valid_lengths)),
            "ort-bertkit-int8": score(lambda b: onnx8.run(b.np_ids, b.np_segs, b.np_mask)[0]),
            "bertkit-int8": score(lambda b: q(b.input_ids, b.segment_ids, b.valid_lengths)),
        }
    print(f"\nSST-2 dev accuracy of {args.classifier} ({len(texts)} sentences):")
    for k, v in results.items():
        print(f"  {k:<18}{100 * v:6.2f}%   ({100 * (v - results['bertkit fp32']):+.2f} points)")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime
    import transformers

    sentences = read_sentences(args.data, args.limit)
    directory = bertkit.resolve(args.model)
    model = bertkit.load(directory).eval()
    print(f"model        {args.model} ({directory})")
    print(f"data         {args.data}: {len(sentences)} sentences in file order")
    print(f"versions     torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, transformers {transformers.__version__}")
    print(f"machine      {platform.processor() or platform.machine()}, {args.threads} threads (torch and ONNX Runtime), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        contenders = build_contenders(args, Path(tmp), model, directory)
        for size in args.batch_sizes:
            batches = make_batches(model.tokenizer, sentences, size)
            real = sum(int(b.valid_lengths.sum()) for b in batches)
            print(f"\n== batch {size}: {len(batches)} batches, {real} real tokens; parity (max abs diff at real tokens vs "
                  f"bertkit): {', '.join(f'{k} {v:.1e}' for k, v in parity(contenders, model, batches).items())}")
            times = time_contenders(contenders, batches, args.passes)
            rate = {n: real / statistics.median(ts) for n, ts in times.items()}
            print(f"{'':<18}{'median s':>10}{'tokens/s':>11}{'vs ort-transformers':>21}{'vs bertkit':>12}   passes (s)")
            for n, ts in times.items():
                print(f"{n:<18}{statistics.median(ts):>10.3f}{rate[n]:>11,.0f}{rate[n] / rate['ort-transformers']:>20.2f}x"
                      f"{rate[n] / rate['bertkit']:>11.2f}x   {' '.join(f'{t:.3f}' for t in ts)}")
            fp32 = [n for n in rate if n.startswith(("bertkit", "ort-bertkit")) and "int8" not in n]
            best = max(fp32, key=rate.get)
            print(f"bertkit's fastest fp32 path at batch {size}: {best}, {rate[best] / rate['ort-transformers']:.2f}x "
                  f"ort-transformers; fastest int8: " + ", ".join(f"{n} {rate[n] / rate['bertkit']:.2f}x bertkit fp32"
                                                                  for n in rate if "int8" in n))
        if args.classifier:
            rows = [r.split("\t") for r in args.data.read_text(encoding="utf-8").splitlines()[1:]]
            accuracy(args, Path(tmp), [(r[0], r[1]) for r in rows if r])


if __name__ == "__main__":
    main()
