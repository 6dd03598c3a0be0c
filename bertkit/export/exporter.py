"""`export()`: a checkpoint -> a self-contained, verified export directory.

    out/
      model.onnx | model.pt2 | model.torchscript.pt    the graph and its weights
      vocab.txt, tokenizer_config.json, tokenizer.json the tokenizer (tokenizer.json: `tokenizers` alone)
      config.json                                      the checkpoint's config (labels in id2label)
      manifest.json                                    inputs, outputs, dtypes, head, labels, limits,
                                                       sentence-vector recipe, verification result

The model file is verified against the PyTorch model before the manifest is written: fp32 must be
within FP32_TOLERANCE (else the export fails and leaves no model file); int8 reports agreement.

The file is always written from the checkpoint loaded on the CPU in float32. `device` only chooses
where the PyTorch reference of the verification runs (the CPU by default; a GPU in true fp32), and
the reference is always fp32: `precision` other than fp32 is refused (verify.py says why).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ..cpu.int8 import quantize_int8
from ..device import resolve_device, resolve_precision
from ..errors import BertkitError
from . import verify
from .graph import INPUT_NAMES, ExportGraph
from .runtime import MANIFEST, MANIFEST_VERSION, ExportedModel

FORMATS = ("onnx", "torch")


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BertkitError(f"--out {out}: is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BertkitError(f"--out {out}: directory is not empty and holds no earlier export; give a new directory")
    out.mkdir(parents=True, exist_ok=True)
    _remove_model_files(out)


def _remove_model_files(out: Path) -> None:
    for name in ("model.onnx", "model.fp32.onnx", "model.pt2", "model.torchscript.pt", MANIFEST):
        (out / name).unlink(missing_ok=True)


def check_precision(precision: str | None, device: torch.device) -> str:
    """The reference's precision for `export`: fp32, or a one-line BertkitError saying why not."""
    key = resolve_precision(precision, device)
    if key != "fp32":
        raise BertkitError(f"--precision {precision}: export writes an fp32 graph and verifies it against the fp32 "
                           "PyTorch model (max |diff| <= 1e-4); a reduced-precision reference would only loosen that "
                           "check, so export takes --precision fp32 only (--device still chooses where the reference runs)")
    return key


def export(model: str | Path, fmt: str, out: str | Path, quantize: str | None = None, seq_length: int | None = None,
           eval_file: str | Path | None = None, optimize: bool = True, device: str | torch.device = "cpu",
           precision: str = "fp32") -> dict:
    """Export checkpoint `model` as `fmt` ("onnx" or "torch") into `out`; returns the manifest.
    `device`: where the fp32 PyTorch reference of the verification runs ("cpu", "cuda", ...); the
    file is written from a CPU fp32 copy whatever it is. `precision`: "fp32" only (see verify.py)."""
    from ..checkpoint import head_of
    from ..pretrained import load, resolve

    device = resolve_device(device)
    check_precision(precision, device)
    if fmt not in FORMATS:
        raise BertkitError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise BertkitError(f"--quantize {quantize!r}: only int8 is supported")
    directory = resolve(model)
    model = load(directory)
    head = head_of(model)
    if head == "pretraining":
        head = "encoder"  # the masked-LM / NSP heads are for training; deploy the encoder
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise BertkitError(f"{directory}: the checkpoint has no vocabulary (vocab.txt or tokenizer.json); an export needs one")
    if model.load_report.get("missing") and head != "encoder":
        raise BertkitError(f"{directory}: the {head} head's weights are missing ({model.load_report['missing'][0]}, ...); "
                           "export a fine-tuned checkpoint")
    cfg = model.config
    max_len = seq_length or min(512, cfg.max_position_embeddings)
    if not 3 <= max_len <= cfg.max_position_embeddings:
        raise BertkitError(f"--seq-length {max_len}: must be between 3 and the model's {cfg.max_position_embeddings} positions")
    eval_examples = verify.read_eval_file(eval_file, head == "regression") if eval_file else None
    if eval_examples is not None and head not in ("classification", "regression"):
        raise BertkitError(f"--eval-file scores classification/regression checkpoints; {directory} holds a {head} head")
    out = Path(out)
    _prepare_out(out)

    graph = ExportGraph(model, head)
    texts = verify.reference_texts([e.text_a for e in eval_examples] if eval_examples else None, tokenizer, max_len)
    batches = verify.verification_batches(tokenizer, texts, max_len)
    try:
        return _export(model, head, directory, graph, batches, fmt, out, quantize, max_len, eval_examples, optimize, device)
    except BaseException:
        _remove_model_files(out)  # a failed export leaves no model file or manifest behind
        raise


def _export(model, head, directory, graph, batches, fmt, out, quantize, max_len, eval_examples, optimize,
            device: torch.device) -> dict:
    from ..inference.embedding import SentenceRecipe

    cfg, tokenizer = model.config, model.tokenizer
    sample = (batches[0].input_ids, batches[0].segment_ids, batches[0].attention_mask.long())
    started = time.perf_counter()
    fused = None
    if fmt == "onnx":
        from . import onnx_format

        model_file = "model.onnx"
        fp32_path = out / ("model.fp32.onnx" if quantize else model_file)
        onnx_format.write_onnx(graph, fp32_path, sample)
        if optimize:
            fused = onnx_format.optimize_for_onnxruntime(fp32_path, cfg.num_attention_heads, cfg.hidden_size)
        if quantize:
            onnx_format.quantize_int8(fp32_path, out / model_file)
            fp32_path.unlink()
        runtime = "onnxruntime" + (" (BERT fusions: contrib ops)" if optimize else "")
    else:
        from . import torch_format

        if quantize:
            model_file, runtime = torch_format.INT8_FILE, "torch.jit.load (TorchScript)"
            torch_format.write_torchscript(quantize_int8(graph), out / model_file, sample)
        else:
            model_file, runtime = torch_format.FP32_FILE, "torch.export.load(path).module()"
            torch_format.write_exported_program(graph, out / model_file, sample, max_len)
    export_seconds = time.perf_counter() - started

    # the tokenizer and config travel with the model
    tokenizer.save(out)
    tokenizer.save_tokenizer_json(out / "tokenizer.json")
    shutil.copyfile(directory / "config.json", out / "config.json")
    recipe = SentenceRecipe.from_dir(directory)
    dims = {"hidden": cfg.hidden_size}
    manifest = {
        "bertkit_export": MANIFEST_VERSION,
        "format": fmt,
        "model_file": model_file,
        "runtime": runtime,
        "head": head,
        "labels": model.labels if head in ("classification", "token_classification") else None,
        "quantization": ({"torch": "int8: weights per output channel, activations per token at run time (bertkit/cpu/int8.py)",
                          "onnx": "int8 dynamic: weights per output channel, activations per batch; feed-forward output "
                                  "layers and embeddings fp32 (export/onnx_format.py)"}.get(fmt, "int8") if quantize else None),
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUT_NAMES],
        "outputs": [{"name": n, "dtype": "float32", "shape": [dims.get(d, d) for d in shape]} for n, shape in graph.output_spec()],
        "max_sequence_length": max_len,
        "tokenizer": {"files": ["tokenizer.json", "vocab.txt", "tokenizer_config.json"], "lowercase": tokenizer.lowercase,
                      "pad_id": tokenizer.pad_id, "pair": "[CLS] a [SEP] b [SEP], token_type_ids 0 then 1"},
        "sentence_embedding": {"pooling": recipe.pooling, "normalize": recipe.normalize,
                               "max_seq_length": recipe.max_seq_length} if head == "encoder" else None,
        "source": {"checkpoint": str(directory), "config": cfg.to_dict()},
        "checkpoint_info": model.info,  # bertkit.json: training metadata, and the settings /answer uses
        "onnxruntime_fusions": fused,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # provisional: the runtime reads it

    exported = ExportedModel(out, threads=torch.get_num_threads())
    n_rows = sum(len(b) for b in batches)
    # The file is written (from the CPU model; the graph shares its modules): now the reference may move.
    model.to(device)
    with verify.true_fp32():
        if quantize:
            result = verify.agreement(model, head, exported, batches, recipe)
        else:
            result = {"max_abs_diff": verify.max_abs_diff(model, head, exported, batches), "tolerance": verify.FP32_TOLERANCE}
        where = "" if device.type == "cpu" else f" on {device}"
        result.update(sentences=n_rows, batches=len(batches), reference=f"bertkit PyTorch fp32{where} (unpadded forward)")
        if eval_examples is not None:
            result["eval"] = verify.eval_scores(model, head, exported, tokenizer, eval_examples, model.labels, max_len)
    if not quantize and not result["max_abs_diff"] <= verify.FP32_TOLERANCE:
        raise BertkitError(f"export failed verification: max |exported - PyTorch| = {result['max_abs_diff']:.3g} over "
                           f"{n_rows} sentences, above the tolerance {verify.FP32_TOLERANCE:g}; no model was written")
    manifest["verification"] = result
    manifest["export_seconds"] = round(export_seconds, 2)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
