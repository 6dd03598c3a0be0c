"""Print how far bertkit's conversions of the fixture checkpoints are from the original frameworks' outputs.

    .venv/bin/python scripts/conversion_parity.py

tests/fixtures/zoo/ holds small random checkpoints written by GluonNLP 0.10 / MXNet 1.9.1 and by
TensorFlow, with those frameworks' outputs on real GLUE sentences (scripts/make_conversion_fixtures.py).
Each is converted with `bertkit convert`'s code, loaded with `bertkit.load`, run on the same inputs, and
compared: max |bertkit - original| over real tokens, next to the largest |original| for scale. The
converted GluonNLP pretraining checkpoint is also run through transformers' BertForPreTraining.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import bertkit
from bertkit.zoo.convert import convert

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "zoo"


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in (("GluonNLP BERTModel (pretraining)", FIXTURES / "gluonnlp_pretraining" / "model.params"),
                             ("GluonNLP BERTClassifier", FIXTURES / "gluonnlp_classifier" / "model.params"),
                             ("TensorFlow (Google BERT names)", FIXTURES / "tf")):
            out = convert(source, Path(tmp) / source.parent.name)
            model = bertkit.load(out)
            with np.load(source.parent / "outputs.npz" if source.is_file() else source / "outputs.npz") as f:
                o = {k: f[k] for k in f.files}
            lengths = o["valid_lengths"] if "valid_lengths" in o else o["input_mask"].sum(1)
            mask = np.arange(o["input_ids"].shape[1])[None, :] < lengths[:, None]
            ids, segs, lens = (torch.from_numpy(a) for a in (o["input_ids"], o["segment_ids"], lengths))
            encoder = model.bert if hasattr(model, "bert") else model
            with torch.no_grad():
                seq, pooled = encoder(ids, segs, lens)
                got = {"sequence_output": seq.numpy()[mask], "pooled_output": pooled.numpy()}
                want = {"sequence_output": o["sequence_output"][mask], "pooled_output": o["pooled_output"]}
                if "mlm_logits" in o:
                    mlm, nsp = model(ids, segs, lens, masked_positions=torch.from_numpy(o["masked_positions"]))
                    got |= {"mlm_logits": mlm.numpy(), "nsp_logits": nsp.numpy()}
                    want |= {"mlm_logits": o["mlm_logits"], "nsp_logits": o["nsp_logits"]}
                if "logits" in o:
                    got["classifier_logits"], want["classifier_logits"] = model(ids, segs, lens).numpy(), o["logits"]
            for output in got:
                rows.append((name, output, float(np.abs(got[output] - want[output]).max()), float(np.abs(want[output]).max())))
            if name.startswith("GluonNLP BERTModel"):
                import transformers

                hf, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
                with torch.no_grad():
                    r = hf.eval()(input_ids=ids, token_type_ids=segs, attention_mask=torch.from_numpy(mask.astype(np.int64)))
                picked = np.take_along_axis(r.prediction_logits.numpy(), o["masked_positions"][:, :, None], axis=1)
                rows.append(("  same, in transformers", "mlm_logits", float(np.abs(picked - o["mlm_logits"]).max()),
                             float(np.abs(o["mlm_logits"]).max())))
                missing = sorted(info["missing_keys"]) + sorted(info["unexpected_keys"]) + sorted(info["mismatched_keys"])
                print(f"transformers.BertForPreTraining.from_pretrained: missing/unexpected/mismatched tensors: {missing or 'none'}")
    print(f"{'checkpoint':<34} {'output':<18} {'max |diff|':>10} {'max |orig|':>10}")
    for name, output, diff, scale in rows:
        print(f"{name:<34} {output:<18} {diff:>10.1e} {scale:>10.2f}")


if __name__ == "__main__":
    main()
