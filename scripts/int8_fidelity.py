"""How close int8 sentence vectors of all-minilm-l6-v2 stay to fp32, per quantization variant.

    nice -n 19 .venv/bin/python scripts/int8_fidelity.py                     # every variant + activation outliers
    nice -n 19 .venv/bin/python scripts/int8_fidelity.py --parts pertoken,onnx # some of them

Sentences: SST-2 dev (872, ../shared/data/glue_data/SST-2/dev.tsv) and the first 1000 AG News test
rows (title + description, ../shared/data/ag_news_csv/test.csv), truncated at the checkpoint's
max_seq_length (256), encoded in batches of 32 sorted by length (as `BertEmbedding` batches them).
Sentence vector: attention-mask mean over the last hidden states (sentence-transformers' recipe for
this checkpoint; its L2 normalisation does not change a cosine). Each int8 variant is compared with
the fp32 model, sentence by sentence: mean and worst cosine over the 1872 sentences.

torch variants run bertkit's own model (`bertkit serve --quantize int8`'s path: unpadded tokens, so
the per-batch activation scale sees real tokens only) and, where marked "export graph", the padded
ExportGraph that `bertkit export --format torch --quantize int8` traces. ONNX variants export the
graph with bertkit's functions (write, ORT BERT fusions, ORT quantize_dynamic) into a temp dir.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import bertkit
from bertkit.cpu.int8 import Int8Linear, quantize_int8

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH = 32
PARTS = ("ao", "pertoken", "export", "onnx")


def sentences(n_sst2: int = 872, n_ag: int = 1000) -> list[str]:
    rows = (DATA / "glue_data" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "sentence\tlabel"
    out = [r.split("\t")[0] for r in rows[1 : 1 + n_sst2]]
    with open(DATA / "ag_news_csv" / "test.csv", encoding="utf-8", newline="") as f:
        for i, (_, title, description) in enumerate(csv.reader(f)):
            if i == n_ag:
                break
            out.append(f"{title}. {description}".replace("\\", " "))
    return out


def batches(model, texts: list[str], max_len: int = 256):
    encodings = model.tokenizer.encode_batch(texts, max_len=max_len)
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
    return [(order[s : s + BATCH], model.tokenizer.pad([encodings[i] for i in order[s : s + BATCH]]))
            for s in range(0, len(order), BATCH)]


def mean_pool(seq: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    mask = (torch.arange(seq.shape[1])[None, :] < lengths[:, None]).to(seq.dtype)
    return ((seq * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)).numpy()


def vectors(module: nn.Module, encoded, n: int, graph: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mean-pooled sentence vectors, pooler outputs) of `module`: a bertkit BertModel (unpadded
    forward), or with `graph` an ExportGraph (padded, as exported)."""
    out, pooled = np.zeros((n, 384), dtype=np.float32), np.zeros((n, 384), dtype=np.float32)
    with torch.inference_mode():
        for idx, b in encoded:
            if graph:
                mask = (torch.arange(b.input_ids.shape[1])[None, :] < b.valid_lengths[:, None]).long()
                seq, pool = module(b.input_ids, b.segment_ids, mask)
            else:
                seq, pool = module(b.input_ids, b.segment_ids, b.valid_lengths)
            out[idx], pooled[idx] = mean_pool(seq, b.valid_lengths), pool.numpy()
    return out, pooled


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def without_reduce_range(module: nn.Module) -> nn.Module:
    """Full 8-bit activations: torch's DynamicQuantizedLinear (version 4) hard-codes reduce_range=True
    (7-bit activations, against int16 saturation of AVX2's u8*s8 pair sums); version 3 calls the
    kernel without it."""
    for m in module.modules():
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            m.version = 3
    return module


def layer_of(name: str) -> int | None:
    found = re.search(r"layers\.(\d+)\.", name)
    return int(found.group(1)) if found else None


# ---- activation outliers ---------------------------------------------------------------------
def outlier_report(model: nn.Module, encoded) -> None:
    """Per layer and Linear, at its input over real tokens (fp32): max |x| / median |x|; how far the
    largest channel sticks out (largest per-channel max / median per-channel max); and how much coarser
    one scale per batch is than one per token for a typical token (batch max / median token max)."""
    stats: dict[str, list] = {}

    def hook(name):
        def record(_, args):
            x = args[0].detach().abs()
            sample = x.flatten()[:: max(1, x.numel() // 200_000)]
            stats.setdefault(name, []).append((float(x.max()), float(sample.median()), x.amax(0),
                                               float(x.max() / x.amax(1).median())))
        return record

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "pooler"]
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears]
    for _, m in linears:
        m.fuse = False  # the plain module call (oneDNN's fused path would skip the hook)
    try:
        vectors(model, encoded[::4], sum(len(i) for i, _ in encoded))
    finally:
        for h in handles:
            h.remove()
        for _, m in linears:
            del m.fuse
    print("\nActivation outliers at each Linear's input (fp32, every 4th batch): max|x| / median|x| (x: the ratio);"
          " ch: largest per-channel max / median per-channel max; tok: batch max / median token max")
    kinds = [n.split(".")[-1] for n, _ in linears[:4]]
    print("layer | " + " | ".join(f"{k:^28}" for k in kinds))
    for layer in range(model.config.num_hidden_layers):
        cells = []
        for k in kinds:
            s = stats[f"layers.{layer}.{k}"]
            top, med = max(v[0] for v in s), float(np.median([v[1] for v in s]))
            ch = torch.stack([v[2] for v in s]).amax(0)
            tok = float(np.median([v[3] for v in s]))
            cells.append(f"{top:5.1f}/{med:.2f}={top / med:4.0f}x ch{float(ch.max() / ch.median()):4.1f} tok{tok:4.1f}")
        print(f"{layer:5d} | " + " | ".join(cells))


# ---- variants --------------------------------------------------------------------------------
def ao_variants(model: nn.Module) -> list[tuple[str, dict]]:
    """torch.ao.quantization.quantize_dynamic variants (fbgemm: per-tensor activations per batch)."""
    n = model.config.num_hidden_layers
    first, last = (lambda name: layer_of(name) == 0), (lambda name: layer_of(name) == n - 1)
    ends = lambda *kinds: (lambda name: name.rsplit(".", 1)[-1] in kinds)  # noqa: E731
    any_of = lambda *fs: (lambda name: any(f(name) for f in fs))  # noqa: E731
    ffn_out, attn_out, pooler = ends("ffn_out"), ends("attn_out"), (lambda name: name == "pooler")
    pc, pc8 = dict(per_channel=True), dict(per_channel=True, reduce_range=False)
    return [
        ("ao per-tensor, every Linear (bertkit before)", dict(per_channel=False)),
        ("ao per-tensor, reduce_range off", dict(per_channel=False, reduce_range=False)),
        ("ao per-channel", pc),
        ("ao per-channel, pooler fp32", dict(pc, keep=pooler)),
        ("ao per-channel, first layer fp32", dict(pc, keep=first)),
        ("ao per-channel, last layer fp32", dict(pc, keep=last)),
        ("ao per-channel, qkv fp32", dict(pc, keep=ends("qkv"))),
        ("ao per-channel, attn_out fp32", dict(pc, keep=attn_out)),
        ("ao per-channel, ffn_in fp32", dict(pc, keep=ends("ffn_in"))),
        ("ao per-channel, ffn_out fp32", dict(pc, keep=ffn_out)),
        ("ao per-channel, ffn_out + attn_out fp32", dict(pc, keep=any_of(ffn_out, attn_out))),
        ("ao per-channel, ffn_out + last layer fp32", dict(pc, keep=any_of(ffn_out, last))),
        ("ao per-channel, reduce_range off", pc8),
        ("ao per-channel, rr off, ffn_out fp32", dict(pc8, keep=ffn_out)),
        ("ao per-channel, rr off, ffn_out + attn_out fp32", dict(pc8, keep=any_of(ffn_out, attn_out))),
        ("ao per-channel, rr off, ffn_out + first layer fp32", dict(pc8, keep=any_of(ffn_out, first))),
        ("ao per-channel, rr off, ffn_out + last layer fp32", dict(pc8, keep=any_of(ffn_out, last))),
        ("ao per-channel, rr off, ffn_out + first + last fp32", dict(pc8, keep=any_of(ffn_out, first, last))),
    ]


def build(model: nn.Module, per_channel: bool, keep=None, reduce_range: bool = True) -> nn.Module:
    qconfig = (torch.ao.quantization.per_channel_dynamic_qconfig if per_channel
               else torch.ao.quantization.default_dynamic_qconfig)
    spec = {name: qconfig for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not (keep and keep(name))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)
    return q if reduce_range else without_reduce_range(q)


def pertoken_variants(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """bertkit.cpu.int8 (per-token int8 activations, per-channel int8 weights)."""
    pooler_too = quantize_int8(model)
    pooler_too.pooler = Int8Linear(model.pooler)
    return [
        ("per-token: bertkit.cpu.int8.quantize_int8 (recipe)", quantize_int8(model)),
        ("per-token, ffn_out fp32", quantize_int8(model, keep_fp32=("ffn_out",))),
        ("per-token, ffn_out + attn_out fp32", quantize_int8(model, keep_fp32=("ffn_out", "attn_out"))),
        ("per-token, pooler int8 too", pooler_too),
    ]


def kept_fp32(module: nn.Module) -> str:
    """Transformer-block Linears left float32 / all of them; and the pooler's state."""
    block = [m for name, m in module.named_modules() if re.search(r"layers\.\d+\.[a-z_]+$", name)
             and not isinstance(m, nn.LayerNorm) and hasattr(m, "in_features")]
    fp32 = sum(isinstance(m, nn.Linear) for m in block)
    pooler = "fp32" if isinstance(module.pooler, nn.Linear) else "int8"
    return f"{fp32:2d}/{len(block)} block, pooler {pooler}"


def ort_quantize(source: Path, target: Path, per_channel: bool, nodes=None, op_types=("MatMul", "Attention")) -> None:
    """onnxruntime.quantization.quantize_dynamic as bertkit calls it, with the knobs open (`nodes`:
    the nodes to quantize, None: every node of `op_types`, None: ONNX Runtime's default op types)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=list(op_types) if op_types else None, nodes_to_quantize=nodes,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def onnx_variants(model, encoded, n, reference, reference_pooled, rows) -> None:
    """ONNX Runtime int8 (per-tensor uint8 activations per padded batch), on the fused graph."""
    import onnx
    import onnxruntime

    from bertkit.export import onnx_format
    from bertkit.export.graph import ExportGraph

    cfg = model.config
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        b = encoded[-1][1]
        sample = (b.input_ids, b.segment_ids, torch.ones_like(b.input_ids))
        fp32 = tmp / "fp32.onnx"
        onnx_format.write_onnx(ExportGraph(model, "encoder"), fp32, sample)
        onnx_format.optimize_for_onnxruntime(fp32, cfg.num_attention_heads, cfg.hidden_size)
        block = onnx_format.int8_nodes(fp32, keep_fp32=())  # every block Linear: Attention_<i>, /layers.<i>/.../MatMul
        last = cfg.num_hidden_layers - 1

        def without(*kinds, layers=()):
            """The block nodes less the MatMuls /layers.<i>/<kind>/MatMul and every node of `layers`."""
            def kept(name):
                return (any(f"/{k}/MatMul" in name for k in kinds)
                        or any(name.startswith(f"/layers.{i}/") or name == f"Attention_{i}" for i in layers))
            return [name for name in block if not kept(name)]

        def run(path: Path):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            out, pooled = np.zeros((n, cfg.hidden_size), dtype=np.float32), np.zeros((n, cfg.hidden_size), dtype=np.float32)
            for idx, bb in encoded:
                mask = (np.arange(bb.input_ids.shape[1])[None, :] < bb.valid_lengths.numpy()[:, None]).astype(np.int64)
                feed = {"input_ids": bb.input_ids.numpy(), "token_type_ids": bb.segment_ids.numpy(), "attention_mask": mask}
                seq, pool = session.run(["last_hidden_state", "pooler_output"], feed)
                out[idx], pooled[idx] = mean_pool(torch.from_numpy(seq), bb.valid_lengths), pool
            return out, pooled

        def add(name, path):
            v, p = run(path)
            nodes = [(node.op_type, node.name) for node in onnx.load(str(path)).graph.node]
            n_fp32 = sum(op == "Attention" or op == "MatMul" and name.startswith("/layers.") for op, name in nodes)
            pooler = "int8" if any(op == "MatMulInteger" and name.startswith("/pooler/") for op, name in nodes) else "fp32"
            kept = f"{n_fp32:2d}/{len(block)} block MatMul+Attention, pooler {pooler}"
            rows.append((name, cosines(reference, v), cosines(reference_pooled, p), kept))
            print(f"  measured: {name}", file=sys.stderr, flush=True)

        add("ONNX fp32 (fused graph; a check)", fp32)
        for name, per_channel, nodes, op_types in [
            ("ONNX per-tensor, ORT defaults (bertkit before)", False, None, None),
            ("ONNX per-tensor, embeddings fp32", False, None, ("MatMul", "Attention")),
            ("ONNX per-channel, embeddings fp32", True, None, ("MatMul", "Attention")),
            ("ONNX per-channel, block only", True, block, ("MatMul", "Attention")),
            ("ONNX per-channel, block only, ffn_out fp32", True, without("ffn_out"), ("MatMul", "Attention")),
            ("ONNX per-channel, ffn_out fp32, embeddings int8", True, None, None),  # then excluded below
            ("ONNX per-channel, block only, ffn_out + attn_out fp32", True, without("ffn_out", "attn_out"),
             ("MatMul", "Attention")),
            ("ONNX per-channel, block only, ffn_out + first layer fp32", True, without("ffn_out", layers=[0]),
             ("MatMul", "Attention")),
            ("ONNX per-channel, block only, ffn_out + last layer fp32", True, without("ffn_out", layers=[last]),
             ("MatMul", "Attention")),
            ("ONNX per-channel, block only, ffn_out + ffn_in fp32", True, without("ffn_out", "ffn_in"),
             ("MatMul", "Attention")),
        ]:
            path = tmp / "int8.onnx"
            if "embeddings int8" in name:  # the recipe's nodes plus the embedding tables
                nodes = without("ffn_out") + [node.name for node in onnx.load(str(fp32)).graph.node
                                              if node.op_type in ("EmbedLayerNormalization", "Gather")]
            ort_quantize(fp32, path, per_channel, nodes, op_types)
            add(name, path)
        path = tmp / "recipe.onnx"
        onnx_format.quantize_int8(fp32, path)
        add("ONNX: onnx_format.quantize_int8 (recipe)", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of {', '.join(PARTS)} (default: all): torch.ao quantize_dynamic, the "
                             "per-token recipe, the padded export graph, ONNX Runtime")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        sys.exit(f"no data at {DATA}")
    from bertkit.export.graph import ExportGraph

    model = bertkit.load("all-minilm-l6-v2").eval()
    texts = sentences()
    encoded = batches(model, texts)
    n = len(texts)
    print(f"{n} sentences in {len(encoded)} batches of <= {BATCH}, "
          f"{int(sum(int(b.valid_lengths.sum()) for _, b in encoded))} tokens")
    reference, reference_pooled = vectors(model, encoded, n)
    outlier_report(model, encoded)

    rows = []

    def measure(name, module, graph=False):
        v, p = vectors(module, encoded, n, graph)
        rows.append((name, cosines(reference, v), cosines(reference_pooled, p), kept_fp32(module)))
        print(f"  measured: {name}", file=sys.stderr, flush=True)

    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        sys.exit(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))}")
    if "ao" in parts:
        for name, kw in ao_variants(model):
            measure(name, build(model, **kw))
    if "pertoken" in parts:
        for name, q in pertoken_variants(model):
            measure(name, q)
    if "export" in parts:
        measure("export graph (padded): ao per-tensor (before)", build(ExportGraph(model, "encoder"), per_channel=False),
                True)
        measure("export graph (padded): bertkit's recipe", quantize_int8(ExportGraph(model, "encoder")),
                True)
    if "onnx" in parts:
        onnx_variants(model, encoded, n, reference, reference_pooled, rows)

    print(f"\nCosine to fp32 of int8 vectors, {n} sentences (872 SST-2 dev + 1000 AG News test): mean-pooled "
          "last hidden states (the sentence vector), and pooler_output")
    width = max(len(r[0]) for r in rows)
    print(f"{'variant':<{width}} | mean cos | worst cos | pooler mean / worst | Linear layers kept fp32")
    for name, c, p, kept in rows:
        print(f"{name:<{width}} | {c.mean():.5f}  | {c.min():.5f}   | {p.mean():.5f} / {p.min():.5f}   | {kept}")


if __name__ == "__main__":
    main()
