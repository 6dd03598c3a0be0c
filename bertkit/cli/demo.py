"""`bertkit demo`: the main job on embedded defaults, no arguments needed.

Each step is a function that prints what it shows: a real pretrained BERT's tokens and vectors,
pretraining one from scratch (demo_pretrain.py), and fine-tuning for sentiment.
"""


# Two birds and one machine: the word is the same token, the contexts give it different vectors.
CRANE_SENTENCES = [
    "a crane is flying over the lake",
    "the crane spread its wings and flew away",
    "a crane driver came to the building site",
]
PARAPHRASES = [
    ("The cat sat on the mat.", "A cat was sitting on the rug."),
    ("The stock market fell sharply today.", "Share prices dropped steeply on Monday."),
]
UNRELATED = "I like to eat pizza with my friends."


def add_arguments(p):
    p.add_argument("--model", default="all-minilm-l6-v2", help="pretrained checkpoint to show (default all-minilm-l6-v2)")
    p.add_argument("--out", default="bertkit-demo", help="where the pretrained model, data and plots go (default ./bertkit-demo)")
    p.add_argument("--pretrain-steps", type=int, default=300, help="pretraining steps (default 300, a few minutes on 2 cores)")


def cosine(a, b) -> float:
    import numpy as np

    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def step_embeddings(model_name: str) -> None:
    from ..inference.embedding import BertEmbedding
    from ..model import count_parameters

    emb = BertEmbedding(model_name)
    cfg = emb.model.config
    print(f"== 1. A pretrained BERT: {model_name}")
    print(f"   {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
          f"{count_parameters(emb.model) / 1e6:.1f}M parameters, vocabulary {emb.tokenizer.vocab_size}")

    print("\n== 2. WordPiece tokens and contextual vectors")
    results = emb(CRANE_SENTENCES)
    for text, (tokens, vectors) in zip(CRANE_SENTENCES, results):
        print(f"   {text!r}")
        print(f"     tokens  {' '.join(tokens)}")
        print(f"     vectors {vectors.shape[0]} x {vectors.shape[1]}; [CLS] starts "
              f"[{', '.join(f'{x:+.3f}' for x in vectors[0, :4])}, ...]")

    bird, bird2, machine = (vectors[tokens.index("crane")] for tokens, vectors in results)
    print("\n== 3. The same word, two meanings: 'crane' the bird and 'crane' the machine")
    print("   the input embedding of 'crane' is identical in all three; the encoder's output is not:")
    print(f"   cosine(bird, bird)    = {cosine(bird, bird2):.3f}")
    print(f"   cosine(bird, machine) = {cosine(bird, machine):.3f}")

    print("\n== 4. Sentence vectors (mean pooling): paraphrases are close, unrelated text is not")
    for a, b in PARAPHRASES:
        va, vb, vu = emb.sentence_vectors([a, b, UNRELATED])
        print(f"   {cosine(va, vb):.3f}  {a!r} ~ {b!r}")
        print(f"   {cosine(va, vu):.3f}  {a!r} ~ {UNRELATED!r}")


DEMO_REVIEWS = ["this movie is so great", "a dull, lifeless mess that wastes its cast"]


def step_finetune(model_name: str, train_examples: int = 1500) -> None:
    """Fine-tune the pretrained checkpoint on real movie-review snippets (rotten-tomatoes), then classify."""
    import tempfile

    from ..inference.predict import predict
    from ..pretrained import load
    from ..train.finetune import FinetuneConfig, finetune

    print("\n== 6. Fine-tuning: sentiment from real Rotten Tomatoes review snippets")
    print(f"   {train_examples} training snippets, 1 epoch, max_len 64 (a few minutes on 2 CPU cores; "
          "`bertkit finetune --task rotten-tomatoes` trains on all of them)")
    config = FinetuneConfig(epochs=1, batch_size=32, lr=1e-4, max_len=64, max_train_examples=train_examples,
                            eval_before=True, seed=0)
    with tempfile.TemporaryDirectory() as out:
        results = finetune("rotten-tomatoes", None, model_name, out, config)
        before, after = results["epochs"][0]["dev_accuracy"], results["dev"]["accuracy"]
        print(f"   dev accuracy ({results['dev_examples']['dev']} snippets): {before:.3f} before fine-tuning, "
              f"{after:.3f} after ({results['train_seconds_per_epoch'][0]:.0f}s of training)")
        model = load(out)
        for text, r in zip(DEMO_REVIEWS, predict(model, DEMO_REVIEWS)):
            print(f"   {r['label']:<8} {r['score']:.3f}  {text!r}")


def run(args):
    import time
    from pathlib import Path

    from .demo_pretrain import step_pretrain

    import torch

    torch.manual_seed(0)
    start = time.perf_counter()
    step_embeddings(args.model)
    step_pretrain(Path(args.out), args.pretrain_steps)
    step_finetune(args.model)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f}s")
