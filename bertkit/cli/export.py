"""`bertkit export`: a checkpoint -> a verified ONNX or PyTorch-native export directory."""

from .options import add_device_arguments, add_threads_argument, apply_threads


def add_arguments(p):
    p.add_argument("--model", required=True, help="checkpoint directory or model name")
    p.add_argument("--format", required=True, choices=("onnx", "torch"),
                   help="onnx: model.onnx for ONNX Runtime; torch: torch.export program (model.pt2; TorchScript for int8)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new, or an earlier export to replace)")
    p.add_argument("--quantize", choices=("int8",), help="dynamic int8 quantization of the dense layers")
    p.add_argument("--seq-length", type=int, metavar="N",
                   help="longest input the exported model accepts, in tokens (default: min(512, the model's positions))")
    p.add_argument("--eval-file", metavar="F.tsv",
                   help="a labelled TSV (header: text or sentence, optional text_b, label): report the accuracy "
                        "(Pearson r for regression) of PyTorch and of the export")
    p.add_argument("--no-optimize", action="store_true",
                   help="onnx: keep plain ONNX ops (any runtime) instead of ONNX Runtime's fused BERT kernels")
    add_threads_argument(p, help="CPU threads for torch / ONNX Runtime during verification")
    add_device_arguments(p)
    for action in p._actions:  # the shared flags, said the way export uses them
        if action.dest == "device":
            action.help = ("where the PyTorch reference of the verification runs: auto (CUDA when available), cpu, cuda "
                           "or cuda:N (default auto). The exported file itself is always written from a CPU fp32 copy "
                           "of the model, and runs on the CPU for the comparison")
        elif action.dest == "precision":
            action.help = ("fp32 only (default): the exported graph is fp32 and is checked against the fp32 PyTorch "
                           "model at 1e-4; bf16/fp16 are refused")


def run(args):
    import sys

    from ..device import resolve_device
    from ..export.exporter import check_precision

    device = resolve_device(args.device)  # a device or precision refused here: one line, --out untouched
    precision = check_precision(args.precision, device)
    apply_threads(args)
    from ..export import export

    m = export(args.model, args.format, args.out, quantize=args.quantize, seq_length=args.seq_length,
               eval_file=args.eval_file, optimize=not args.no_optimize, device=device, precision=precision)
    v = m["verification"]
    print(f"exported {m['head']} model as {args.format}{' int8' if args.quantize else ''}: "
          f"{args.out}/{m['model_file']} ({m['export_seconds']:.1f} s)", file=sys.stderr)
    line = f"verified on {v['sentences']} sentences in {v['batches']} batches: max |export - PyTorch| = {v['max_abs_diff']:.2e}"
    if device.type != "cpu":
        line += f" (PyTorch fp32 on {device})"
    if "tolerance" in v:
        line += f" (tolerance {v['tolerance']:g})"
    if "label_agreement" in v:
        line += f", label agreement {100 * v['label_agreement']:.1f}%"
    if "cosine_mean" in v:
        line += f", cosine mean {v['cosine_mean']:.4f} min {v['cosine_min']:.4f}"
    print(line, file=sys.stderr)
    if "eval" in v:
        e = v["eval"]
        print(f"{e['file']}: {e['examples']} examples, {e['metric']} PyTorch fp32 {e['pytorch_fp32']:.4f}, "
              f"export {e['export']:.4f} ({e['change_points']:+.2f} points)", file=sys.stderr)
