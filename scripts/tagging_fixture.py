"""Writes tests/fixtures/conll2003_testa_minilm_predictions.txt.gz: the tags a fine-tuned checkpoint
predicts for every word of CoNLL-2003 dev (eng.testa), one sentence per line, for the metric test.

    python scripts/tagging_fixture.py runs/ner/bertkit-s1 ../shared/data/conll2003/eng.testa
"""

import gzip
import sys
from pathlib import Path

import torch

import bertkit
from bertkit.tagging.conll import read_conll
from bertkit.tagging.features import TaggedWindows
from bertkit.tagging.inference import word_probabilities

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "conll2003_testa_minilm_predictions.txt.gz"


def main(model_dir: str, testa: str) -> None:
    torch.set_num_threads(1)
    model = bertkit.load(model_dir)
    sentences = read_conll(testa, 4)
    data = TaggedWindows(model.tokenizer, [s.words for s in sentences], None, model.info.get("max_len", 128))
    probs = word_probabilities(model, data)
    lines = [" ".join(model.labels[j] for j in p.argmax(-1)) for p in probs]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(OUT, "wt", encoding="utf-8", compresslevel=9) as f:  # mtime in the header: fine for a fixture
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} sentences to {OUT}")


if __name__ == "__main__":
    main(*sys.argv[1:])
