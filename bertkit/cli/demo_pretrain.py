"""The demo's pretraining step: a BERT trained from scratch on real Wikipedia text, and proof it learned.

wiki-sample (gensim's shortened Wikipedia dump) -> a WordPiece vocabulary trained on it -> masked-LM +
next-sentence instances -> a few minutes of pretraining a small BERT -> held-out accuracy next to a
randomly initialised model of the same shape, and its guesses for masked words in held-out text.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

VOCAB_SIZE = 8000  # a small vocabulary keeps the MLM softmax cheap on a CPU
SHAPE = "bert_2_128_2"


def masked_examples(heldout: Path, tokenizer, count: int = 3) -> list[tuple[str, str]]:
    """(sentence with one word replaced by [MASK], the word) for a few held-out sentences."""
    out = []
    lines = [l.strip() for l in heldout.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        words = line.split()
        if not 8 <= len(words) <= 20:
            continue
        # mask a mid-sentence word the vocabulary knows whole: a fair question for a small model
        for i in range(len(words) // 2, len(words) - 1):
            word = words[i].lower()
            if re.fullmatch(r"[a-z]{3,}", word) and tokenizer.tokenize(word) == [word]:
                out.append((" ".join(words[:i] + ["[MASK]"] + words[i + 1:]), word))
                break
        if len(out) == count:
            break
    return out


def step_pretrain(out_dir: Path, steps: int) -> Path:
    import shutil

    import torch

    from ..checkpoint import read_bertkit_info

    from ..pretrained import load
    from ..config import BertConfig
    from ..data.loader import PretrainingLoader
    from ..data.pretraining import CorpusFile, PretrainingConfig, create_pretraining_data
    from ..data.wiki_sample import wiki_sample_paths
    from ..inference.fill_mask import fill_mask
    from ..model import BertForPreTraining
    from ..tokenizer import BertTokenizer, train_vocab
    from ..train.pretrain import PretrainOptions, evaluate, pretrain

    print(f"\n== 5. Pretraining a BERT from scratch ({SHAPE}) on wiki-sample, real Wikipedia articles")
    start = time.perf_counter()
    corpus = wiki_sample_paths()
    vocab_dir = out_dir / "vocab"
    tokenizer = BertTokenizer({t: i for i, t in enumerate(train_vocab([corpus.train], size=VOCAB_SIZE))})
    tokenizer.save(vocab_dir)
    print(f"   WordPiece vocabulary trained on the training articles: {tokenizer.vocab_size} tokens -> {vocab_dir}")
    shards = {}
    for split, path, dupe in (("train", corpus.train, 2), ("heldout", corpus.heldout, 1)):
        shards[split] = out_dir / f"shards-{split}"
        stats = create_pretraining_data(
            [CorpusFile(str(path), "docs")], vocab_dir / "vocab.txt", shards[split],
            PretrainingConfig(max_seq_length=128, dupe_factor=dupe), overwrite=True, progress=False,
        )
        print(f"   {split:<8} {stats['documents']} articles -> {stats['instances']} instances "
              f"({stats['tokens']:,} tokens, 80/10/10 masking, 50% random next sentence)")
    print(f"   data ready in {time.perf_counter() - start:.0f}s; training {steps} steps of batch 32 ...")

    run_dir = out_dir / "pretrain"
    opts = PretrainOptions(
        data=str(shards["train"]), out=str(run_dir), config=SHAPE, steps=steps, batch_size=32, lr=2e-3,
        warmup_ratio=0.06, eval_data=str(shards["heldout"]), eval_interval=max(1, steps // 2),
        ckpt_interval=max(1, steps // 2), log_interval=10, plot=True, progress=True,
    )
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts fresh
    final = pretrain(opts)

    torch.manual_seed(1)
    untrained = BertForPreTraining(BertConfig.from_preset(SHAPE, vocab_size=tokenizer.vocab_size))
    scores = {
        "random init": evaluate(untrained, PretrainingLoader(shards["heldout"], 32, shuffle=False)),
        "pretrained": read_bertkit_info(final)["eval"],  # the run evaluated its final model on the same shards
    }
    print(f"\n   held-out articles ({scores['pretrained']['eval_instances']} instances)   MLM accuracy   NSP accuracy   MLM perplexity")
    for name, s in scores.items():
        print(f"   {name:<40} {s['eval_mlm_accuracy']:>10.3f} {s['eval_nsp_accuracy']:>14.3f} {s['eval_mlm_perplexity']:>16.1f}")

    print("\n   its top guesses for a masked word in held-out sentences (minutes of CPU training teach word")
    print("   frequencies first; guesses that follow the context take hours: see docs/results.md):")
    for (text, answer), guesses in zip(examples := masked_examples(corpus.heldout, tokenizer),
                                       fill_mask(load(final), [t for t, _ in examples])):
        top = ", ".join(f"{tok} {p:.2f}" for tok, p in guesses[0])
        print(f"   {text}\n      answer: {answer:<12} guesses: {top}")
    print(f"\n   checkpoint: {final} (loads in transformers' BertForPreTraining too)")
    if (run_dir / "loss.png").is_file():
        print(f"   loss and accuracy curves: {run_dir / 'loss.png'}")
    print(f"   metrics: {run_dir / 'metrics.jsonl'}")
    return final
