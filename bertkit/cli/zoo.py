"""`bertkit zoo`: the named pretrained BERTs, what each is, and whether it is on this machine."""


def add_arguments(p):
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="zoo names (bert_12_768_12/book_corpus_wiki_en_uncased) or Hub ids to show or fetch (default: all)")
    p.add_argument("--fetch", action="store_true", help="download the named models into the Hugging Face cache")
    p.add_argument("--offline", action="store_true", help="never download (as HF_HUB_OFFLINE=1)")
    p.add_argument("--json", action="store_true", help="one JSON object per model instead of a table")


def run(args):
    import json

    from ..errors import BertkitError
    from ..zoo.hub import download
    from ..zoo.names import ZOO, lookup
    from ..zoo.resolve import HUB_ID, entry_status, fetch

    if args.fetch and not args.names:
        raise BertkitError("--fetch needs the names of the models to download (bertkit zoo --fetch NAME ...)")
    entries = []
    for name in args.names or ZOO:
        entry = lookup(name)
        if entry is None and not (args.fetch and HUB_ID.match(name)):
            raise BertkitError(f"{name!r} is not a zoo name; run `bertkit zoo` for the list")
        entries.append((name, entry))
    if args.fetch:
        for name, entry in entries:
            snapshot = fetch(entry) if entry is not None else download(name)
            print(f"{name}\t{snapshot}")
        return
    rows = []
    for _, e in entries:
        rows.append({"name": e.name, "repo": e.repo, "layers": e.layers, "hidden": e.hidden, "heads": e.heads,
                     "cased": e.cased, "languages": e.languages, "vocab_size": e.vocab_size, "parameters": e.parameters,
                     "here": entry_status(e), "note": e.note})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    width = max(len(r["name"]) for r in rows)
    print(f"{'NAME':<{width}}  {'L':>2} {'H':>4} {'A':>2}  {'PARAMS':>6}  {'CASE':<7} {'HERE':<8} {'HUB REPOSITORY / LANGUAGES'}")
    for r in rows:
        where = {"hf-cache": "yes", "gluonnlp": "gluonnlp"}.get(r["here"], "-")
        repo = r["repo"] or "(none: " + r["note"] + ")"
        print(f"{r['name']:<{width}}  {r['layers']:>2} {r['hidden']:>4} {r['heads']:>2}  {r['parameters'] / 1e6:>5.0f}M  "
              f"{'cased' if r['cased'] else 'uncased':<7} {where:<8} {repo}; {r['languages']}")
    print("HERE: yes = in the Hugging Face cache; gluonnlp = GluonNLP's file in $MXNET_HOME/models (converted on load).")
    print("Load any of them by name (bertkit.load(NAME), --model NAME); a missing one is downloaded unless --offline.")
