"""`bertkit info MODEL`: what a checkpoint is."""



def add_arguments(p):
    p.add_argument("model", help="checkpoint directory, packaged model name, or model id in the local HF cache")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args):
    import json

    from ..pretrained import load
    from ..cpu.optimize import inference_path
    from ..cpu.threads import describe
    from ..model import count_parameters

    model = load(args.model)
    cfg = model.config
    report = {
        "directory": model.load_report["directory"],
        "head": type(model).__name__,
        "shape": cfg.shape_name(),
        "parameters": count_parameters(model),
        "config": {k: v for k, v in cfg.to_dict().items() if k not in ("architectures", "id2label", "label2id")},
        "heads_present": _heads_present(model),
        "labels": model.labels,
        "vocab_size": model.tokenizer.vocab_size if model.tokenizer else None,
        "lowercase": model.tokenizer.lowercase if model.tokenizer else None,
        "initialised_tensors": model.load_report["missing"],
        "unused_tensors": model.load_report["unexpected"],
        "threads": describe(),
        # which CPU path each precision takes with this model here, and why (nothing is compiled to say it)
        "cpu_inference": {name: inference_path(cfg, *how, build=False)
                          for name, how in (("fp32", ("fp32",)), ("bf16", ("bf16",)), ("int8", ("fp32", "int8")))},
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"model       {report['directory']}")
    print(f"class       {report['head']} ({report['shape']}, {report['parameters']:,} parameters)")
    print(f"heads       {', '.join(report['heads_present']) or 'none (encoder only)'}")
    if report["labels"]:
        print(f"labels      {', '.join(map(str, report['labels']))}")
    casing = "uncased" if report["lowercase"] else "cased"
    print(f"vocabulary  {report['vocab_size']} WordPiece tokens, {casing}" if report["vocab_size"] else "vocabulary  none")
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
                "max_position_embeddings", "type_vocab_size", "layer_norm_eps"):
        print(f"  {key:<25} {report['config'][key]}")
    if report["unused_tensors"]:
        print(f"unused      {len(report['unused_tensors'])} tensor(s) in the file not used by this model")
    print(report["threads"])
    print("CPU inference (bertkit serve / embed / predict on this CPU):")
    for line in report["cpu_inference"].values():
        print(f"  {line}")


def _heads_present(model):
    """The parts beyond the encoder whose weights the checkpoint really holds."""
    from ..checkpoint import head_of

    missing = model.load_report["missing"]
    head = head_of(model)
    present = []
    if getattr(getattr(model, "bert", model), "pooler", None) is not None and not any("pooler." in m for m in missing):
        present.append("pooler")
    if head == "pretraining":
        if not any(m.startswith("cls.predictions") for m in missing):
            present.append("masked-LM")
        if not any(m.startswith("cls.seq_relationship") for m in missing):
            present.append("next-sentence")
    elif head != "encoder" and not any(not m.startswith("bert.") for m in missing):
        present.append(head.replace("_", "-"))
    return present
