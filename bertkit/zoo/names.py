"""The zoo's names: what each one is, and where it lives on the Hugging Face Hub.

Two families of names:
- GluonNLP 0.10's BERT table, `MODEL/DATASET` as GluonNLP's
  `get_model('bert_12_768_12', dataset_name='book_corpus_wiki_en_uncased')` spells it. Google's original
  release (English, multilingual, Chinese; base and large) now lives under `google-bert/` on the Hub;
  SciBERT and BioBERT under their authors' accounts. Entries whose weights were only ever published by
  GluonNLP (its OpenWebText BERT) or whose Hub copy is not a WordPiece BERT (KoBERT) have no
  repository: bertkit still takes them from GluonNLP's own download folder ($MXNET_HOME/models) when
  the files are there, converting them (see resolve.py).
- Google's 24 smaller BERTs (Turc et al., 2019), `bert_L_H_A/uncased`, all English uncased, H/64 heads.

Plus the old un-prefixed Hub ids (`bert-base-uncased`, ...) as aliases of their `google-bert/` repositories.
The vocabulary sizes are those of the published checkpoints; the parameter counts are computed from the
shape (encoder, embeddings and pooler; the pretraining heads add a little).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BertkitError


@dataclass(frozen=True)
class ZooEntry:
    name: str  # "bert_12_768_12/book_corpus_wiki_en_uncased"
    repo: str | None  # Hugging Face Hub repository id, or None where none holds these weights
    layers: int
    hidden: int
    heads: int
    cased: bool
    languages: str
    vocab_size: int
    family: str  # "gluonnlp" or "google-small"
    gluonnlp_params_sha1: str | None = None  # first 8 hex digits of GluonNLP's file name, for $MXNET_HOME/models
    gluonnlp_vocab_sha1: str | None = None
    note: str = ""

    @property
    def model(self) -> str:
        return self.name.split("/")[0]

    @property
    def dataset(self) -> str:
        return self.name.split("/")[1]

    @property
    def parameters(self) -> int:
        """Parameters of the encoder with its pooler (what `BertModel` holds), for this vocabulary."""
        return encoder_parameters(self.layers, self.hidden, 4 * self.hidden, self.vocab_size)


def encoder_parameters(layers: int, hidden: int, ffn: int, vocab: int, positions: int = 512, segments: int = 2) -> int:
    embeddings = (vocab + positions + segments) * hidden + 2 * hidden  # three tables + LayerNorm
    layer = (4 * hidden * hidden + 4 * hidden) + 2 * hidden + (2 * hidden * ffn + ffn + hidden) + 2 * hidden
    pooler = hidden * hidden + hidden
    return embeddings + layers * layer + pooler


# GluonNLP 0.10 (gluonnlp/model/bert.py `model_store._model_sha1`, gluonnlp/data/utils.py `_vocab_sha1`):
# (model, dataset, params sha1[:8], vocab sha1[:8], Hub repo, cased, languages, vocab size, note)
_EN, _MULTI = "English", "multilingual (104 languages)"
_GLUONNLP = [
    ("bert_12_768_12", "book_corpus_wiki_en_uncased", "75cc780f", "a6607397", "google-bert/bert-base-uncased", False, _EN, 30522, ""),
    ("bert_12_768_12", "book_corpus_wiki_en_cased", "5656dac6", "2d62af22", "google-bert/bert-base-cased", True, _EN, 28996, ""),
    ("bert_12_768_12", "openwebtext_book_corpus_wiki_en_uncased", "a56e2401", "a6607397", None, False, _EN, 30522,
     "pretrained by GluonNLP on OpenWebText; published only in GluonNLP's format"),
    ("bert_12_768_12", "wiki_multilingual_uncased", "237f3985", "2b2514cc", "google-bert/bert-base-multilingual-uncased",
     False, "multilingual (102 languages)", 105879, ""),
    ("bert_12_768_12", "wiki_multilingual_cased", "b0f57a20", "0247cb44", "google-bert/bert-base-multilingual-cased", True, _MULTI, 119547, ""),
    ("bert_12_768_12", "wiki_cn_cased", "885ebb9a", "ddebd8f3", "google-bert/bert-base-chinese", True, "Chinese", 21128, ""),
    ("bert_24_1024_16", "book_corpus_wiki_en_uncased", "24551e14", "a6607397", "google-bert/bert-large-uncased", False, _EN, 30522, ""),
    ("bert_24_1024_16", "book_corpus_wiki_en_cased", "4e685a96", "2d62af22", "google-bert/bert-large-cased", True, _EN, 28996, ""),
    ("bert_12_768_12", "scibert_scivocab_uncased", "6c82d963", "2d2566bf", "allenai/scibert_scivocab_uncased", False,
     "English (scientific)", 31090, ""),
    ("bert_12_768_12", "scibert_scivocab_cased", "adf9c81e", "2c714475", "allenai/scibert_scivocab_cased", True,
     "English (scientific)", 31116, ""),
    ("bert_12_768_12", "scibert_basevocab_uncased", "75acea8e", "80ef760a", None, False, "English (scientific)", 30522,
     "SciBERT with BERT's own vocabulary; AllenAI put only the scivocab models on the Hub"),
    ("bert_12_768_12", "scibert_basevocab_cased", "8e86e5de", "a4ff6fe1", None, True, "English (scientific)", 28996,
     "SciBERT with BERT's own vocabulary; AllenAI put only the scivocab models on the Hub"),
    ("bert_12_768_12", "biobert_v1.0_pmc_cased", "a0778038", "a4ff6fe1", None, True, "English (biomedical)", 28996,
     "BioBERT v1.0 is not on the Hub (dmis-lab published v1.1 there)"),
    ("bert_12_768_12", "biobert_v1.0_pubmed_cased", "280ad1cc", "a4ff6fe1", None, True, "English (biomedical)", 28996,
     "BioBERT v1.0 is not on the Hub (dmis-lab published v1.1 there)"),
    ("bert_12_768_12", "biobert_v1.0_pubmed_pmc_cased", "8a8c7544", "a4ff6fe1", None, True, "English (biomedical)", 28996,
     "BioBERT v1.0 is not on the Hub (dmis-lab published v1.1 there)"),
    ("bert_12_768_12", "biobert_v1.1_pubmed_cased", "55f15c5d", "a4ff6fe1", "dmis-lab/biobert-v1.1", True, "English (biomedical)", 28996, ""),
    ("bert_12_768_12", "clinicalbert_uncased", "60281c98", "80ef760a", None, False, "English (clinical)", 30522,
     "Huang et al.'s ClinicalBERT; the Hub's ClinicalBERTs (Bio_ClinicalBERT, medicalai) are other models"),
    ("bert_12_768_12", "kobert_news_wiki_ko_cased", "ccf0593e", "f86b1a83", None, True, "Korean", 8002,
     "KoBERT's tokenizer is SentencePiece, not WordPiece: bertkit cannot tokenize for it"),
]

# Old Hub ids that now redirect to google-bert/...
_ALIASES = {repo.split("/")[1]: repo for *_, repo, _c, _l, _v, _n in _GLUONNLP if repo and repo.startswith("google-bert/")}


_SHAPE = re.compile(r"^bert_(\d+)_(\d+)_(\d+)$")


def parse_shape_name(name: str) -> tuple[int, int, int]:
    """(layers, hidden, heads) of a `bert_L_H_A` name; a one-line error for anything else."""
    m = _SHAPE.match(name)
    if not m:
        raise BertkitError(f"{name!r} is not a shape name (bert_LAYERS_HIDDEN_HEADS, e.g. bert_12_768_12)")
    layers, hidden, heads = map(int, m.groups())
    if heads == 0 or hidden % heads:
        raise BertkitError(f"{name!r}: hidden size {hidden} is not divisible by {heads} heads")
    return layers, hidden, heads


def _build() -> dict[str, ZooEntry]:
    table = {}
    for model, dataset, psha, vsha, repo, cased, langs, vocab, note in _GLUONNLP:
        layers, hidden, heads = parse_shape_name(model)
        name = f"{model}/{dataset}"
        table[name] = ZooEntry(name, repo, layers, hidden, heads, cased, langs, vocab, "gluonnlp", psha, vsha, note)
    for layers in (2, 4, 6, 8, 10, 12):
        for hidden in (128, 256, 512, 768):
            heads = hidden // 64
            name = f"bert_{layers}_{hidden}_{heads}/uncased"
            repo = f"google/bert_uncased_L-{layers}_H-{hidden}_A-{heads}"
            table[name] = ZooEntry(name, repo, layers, hidden, heads, False, _EN, 30522, "google-small")
    return table


ZOO: dict[str, ZooEntry] = _build()

def lookup(name: str, dataset: str | None = None) -> ZooEntry | None:
    """The entry for `MODEL/DATASET` (or MODEL with dataset=DATASET), or an old Hub alias; None if
    the name is not a zoo name at all. A zoo model with an unknown dataset is an error listing the
    datasets it has."""
    name = str(name)
    if dataset is not None:
        name = f"{name}/{dataset}"
    if name in ZOO:
        return ZOO[name]
    if name in _ALIASES:
        return next(e for e in ZOO.values() if e.repo == _ALIASES[name] and e.family == "gluonnlp")
    model, _, ds = name.partition("/")
    known = [e.dataset for e in ZOO.values() if e.model == model]
    if not known:
        return None
    hint = f"datasets for {model}: {', '.join(known)}"
    if not ds:
        raise BertkitError(f"{model!r} names a shape, not pretrained weights: add a dataset, e.g. {model}/{known[0]} ({hint})")
    raise BertkitError(f"unknown zoo name {name!r} ({hint})")


def aliases() -> dict[str, str]:
    return dict(_ALIASES)
