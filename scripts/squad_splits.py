"""Write the SQuAD train/eval splits used in docs/results.md, deterministically, from the shared files.

    python scripts/squad_splits.py ../shared/data/squad runs/squad/data

The official train sets are not available here, so the two dev files are split by article:
- SQuAD 1.1: train on the 32 articles of dev-v1.1.json that are not in dev-v2.0-half.json (7,595
  questions), evaluate on the v1.1 questions of the other 16 articles (2,975).
- SQuAD 2.0: train on those 32 articles plus the first 8 articles of dev-v2.0-half.json, evaluate on
  its last 8 articles.
Writes squad1.1-train.json, squad1.1-eval.json, squad2.0-train.json, squad2.0-eval.json and prints
the counts. Articles keep their file order; nothing is shuffled.
"""

import argparse
import json
from pathlib import Path


def count(articles):
    questions = [qa for a in articles for p in a["paragraphs"] for qa in p["qas"]]
    return len(articles), len(questions), sum(bool(qa.get("is_impossible")) for qa in questions)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("squad_dir", help="the folder holding dev-v1.1.json and dev-v2.0-half.json")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    src, out = Path(args.squad_dir), Path(args.out_dir)
    v1 = json.loads((src / "dev-v1.1.json").read_text(encoding="utf-8"))
    v2 = json.loads((src / "dev-v2.0-half.json").read_text(encoding="utf-8"))
    v2_titles = {a["title"] for a in v2["data"]}
    if not v2_titles <= {a["title"] for a in v1["data"]}:
        raise SystemExit("dev-v2.0-half.json has articles that dev-v1.1.json lacks: not the expected files")
    splits = {
        "squad1.1-train": ("1.1", [a for a in v1["data"] if a["title"] not in v2_titles]),
        "squad1.1-eval": ("1.1", [a for a in v1["data"] if a["title"] in v2_titles]),
        "squad2.0-train": ("v2.0", [a for a in v1["data"] if a["title"] not in v2_titles] + v2["data"][:8]),
        "squad2.0-eval": ("v2.0", v2["data"][8:]),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, (version, articles) in splits.items():
        (out / f"{name}.json").write_text(json.dumps({"version": version, "data": articles}, ensure_ascii=False),
                                          encoding="utf-8")
        n_articles, n_questions, n_impossible = count(articles)
        print(f"{name}.json: {n_articles} articles, {n_questions} questions ({n_impossible} unanswerable)")


if __name__ == "__main__":
    main()
