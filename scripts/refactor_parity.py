"""Same numbers before and after a refactor: two trees, one run, every step side by side (issue #20).

    python scripts/refactor_parity.py --before 09bd81b                 # after = this working tree
    python scripts/refactor_parity.py --before 09bd81b --after HEAD    # or a commit, or a directory
    python scripts/refactor_parity.py --before 09bd81b --after 09bd81b --quick   # self-check: all EQUAL

`--before` (and `--after` when it names a commit) is checked out with `git worktree add --detach`
under --work (reused when it is already there at that commit; removed at the end only when this run
added it, unless --keep-worktrees). A directory is used as it is. Every job runs in a subprocess of
this same interpreter with PYTHONPATH=<tree> and cwd=<tree>, TOKENIZERS_PARALLELISM=false,
OMP_NUM_THREADS=MKL_NUM_THREADS=1 (and --threads 1 / torch.set_num_threads(1) where the job takes
it), --device cpu, HF_HUB_OFFLINE=1 and a torch-extensions directory of its own per tree. Jobs touch
only what survives the move: the CLI (`python -m bertkit ...`), `bertkit.load(name)`,
`model(model.tokenizer(texts))`, and the CPU serve path through `bertkit.cpu.optimize_for_cpu`
(after the move) or `use_scripted_encoder(pack_linear_weights(model))` (before it).

Steps (one line each: what was compared, max abs difference, EQUAL = bit-for-bit / CLOSE = within the
stated tolerance / DIFFERENT; FAILED when a job did not finish):
  1. model outputs of all-minilm-l6-v2 (eval, no_grad) on real sentences, batch 1 and padded batches
     of 8 (real tokens only), sequence and pooled output; the same sentences through `bertkit embed`
  2. the same through the CPU serve path
  3. `bertkit pretrain-data` shards, `bertkit pretrain` per-step losses and final weights (tiny model)
  4. `bertkit finetune` sst-2 and conll2003, `bertkit squad` (SQuAD 1.1): eval_results.json,
     metrics.jsonl, predictions and the saved weights
  5. speed of the plain forward (batch 1 over the sentences, batch 32) and of the serve path
     (batch 1), the trees timed alternately in fresh processes; the after/before ratio is printed,
     never judged
Exit status 0 when every step of 1-4 is EQUAL or CLOSE, else 1. Ends with a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quality_ablation import conll_sentences  # scripts/: the CoNLL sentence blocks, as the ablation cuts them

REPO = Path(__file__).resolve().parent.parent
MODEL = "all-minilm-l6-v2"

# Keys that hold timings, throughput or memory: never compared.
VOLATILE = re.compile(r"seconds|_per_s$|^per_s|^mfu$|rss|^time_s$|^time$|elapsed|^wall|timestamp", re.I)

FALLBACK_SENTENCES = [
    "the film is a charming and often affecting journey .",
    "a crane is flying over the river at dawn .",
    "nothing in this story works , and the actors seem to know it .",
    "she opened the window and let the cold air into the room .",
    "the committee approved the budget after a long debate on tuesday .",
    "an unflinchingly bleak and desperate portrait of a small town .",
    "he said the train would be late because of snow on the tracks .",
    "the best performances are the quiet ones in the second half .",
    "prices rose by three percent in the first quarter of the year .",
    "my grandmother kept bees in the garden behind the house .",
    "the plot is thin , but the jokes land more often than not .",
    "researchers measured the temperature of the lake every hour .",
    "a loud , messy and ultimately empty spectacle .",
    "the children built a small boat out of old wooden boxes .",
    "it never quite decides whether it wants to be a comedy or a thriller .",
    "the museum will reopen next month after two years of repairs .",
    "every scene feels rushed , as if the editor had a plane to catch .",
    "they walked along the coast until the lighthouse came into view .",
    "the score is lovely and the photography is even better .",
    "the new bridge shortens the trip to the city by twenty minutes .",
    "a tender , funny and surprisingly wise little movie .",
    "the doctor asked him to come back in two weeks for another test .",
    "long stretches of it are simply boring .",
    "the company hired forty new engineers for its office in berlin .",
    "what begins as a farce turns into something close to tragedy .",
    "rain fell all night and the streets were flooded by morning .",
    "the dialogue sounds like it was written by a committee .",
    "she won the race by less than a second .",
    "a gripping documentary about the people who clean up after disasters .",
    "the recipe calls for two eggs , flour and a little butter .",
    "the sequel repeats every mistake of the original and adds a few of its own .",
    "on clear nights you can see the mountains from the roof .",
]


# ---- trees ----------------------------------------------------------------------------------------
@dataclass
class Tree:
    label: str  # "before" / "after"
    path: Path
    created: bool  # this run added the worktree (and removes it at the end)
    described: str  # commit (and "+ uncommitted changes") for the header


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def materialise(ref: str | None, label: str, work: Path) -> Tree:
    if ref is None:  # this working tree, uncommitted edits included
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return Tree(label, REPO, False, f"{git('rev-parse', '--short=12', 'HEAD')} (working tree{', uncommitted changes' if dirty else ''})")
    if Path(ref).is_dir() and (Path(ref) / "bertkit").is_dir():
        p = Path(ref).resolve()
        return Tree(label, p, False, f"directory {p}")
    try:
        sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"{ref!r} is neither a bertkit tree directory nor a commit of {REPO}")
    path = work / f"tree-{label}-{sha[:12]}"
    if path.exists():
        try:
            head = git("rev-parse", "HEAD", cwd=path)
        except subprocess.CalledProcessError:
            head = ""
        if head != sha:
            raise SystemExit(f"{path} exists but is not a checkout of {sha[:12]}: remove it or choose another --work")
        if git("status", "--porcelain", "--untracked-files=no", cwd=path):
            print(f"warning: {path} has local changes (reused as it is)", file=sys.stderr)
        return Tree(label, path, False, f"{sha[:12]} (worktree reused)")
    git("worktree", "add", "--detach", str(path), sha)
    return Tree(label, path, True, f"{sha[:12]} (worktree {path})")


def tree_env(tree: Tree, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("BERTKIT_SET_THREAD_VARIABLES", "BERTKIT_THREADS", "CUDA_VISIBLE_DEVICES"):
        env.pop(k, None)
    env.update(
        PYTHONPATH=str(tree.path),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",  # CPU parity, also on a machine with a GPU
        TORCH_EXTENSIONS_DIR=str(work / f"torch-extensions-{tree.label}"),
        PARITY_TREE=str(tree.path),
    )
    return env


class JobFailed(Exception):
    pass


class Runner:
    def __init__(self, work: Path, timeout: int):
        self.work, self.timeout = work, timeout
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def __call__(self, tree: Tree, name: str, argv: list[str]) -> str:
        """Run argv in `tree`; returns its standard output. Output goes to logs/<label>-<name>.log."""
        log = self.logs / f"{tree.label}-{name}.log"
        started = time.perf_counter()
        try:
            p = subprocess.run(argv, cwd=tree.path, env=tree_env(tree, self.work), capture_output=True,
                               text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            log.write_text(f"$ {' '.join(argv)}\ntimed out after {self.timeout} s\n")
            raise JobFailed(f"{tree.label}: {name} timed out after {self.timeout} s (log {log})")
        log.write_text(f"$ {' '.join(argv)}\n# rc {p.returncode}, {time.perf_counter() - started:.1f} s\n"
                       f"--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
        if p.returncode != 0:
            tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
            raise JobFailed(f"{tree.label}: {name} exited {p.returncode}: {tail} (log {log})")
        return p.stdout

    def bertkit(self, tree: Tree, name: str, *args: str) -> str:
        return self(tree, name, [sys.executable, "-m", "bertkit", *args])

    def child(self, tree: Tree, name: str, *args: str) -> str:
        return self(tree, name, [sys.executable, str(Path(__file__).resolve()), "--child", *args])


# ---- comparisons ----------------------------------------------------------------------------------
@dataclass
class Result:
    status: str  # EQUAL / CLOSE / DIFFERENT / FAILED
    max_diff: float | None = None
    count: int = 0  # values compared
    detail: list[str] = field(default_factory=list)
    tol: float | None = None  # the CLOSE bound it was judged by


def judge(exact: bool, max_diff: float, count: int, tol: float, detail: list[str], mismatch: bool = False) -> Result:
    if mismatch:
        return Result("DIFFERENT", max_diff, count, detail)
    if exact:
        return Result("EQUAL", max_diff, count, detail)
    return Result("CLOSE" if max_diff <= tol else "DIFFERENT", max_diff, count, detail)


def compare_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float) -> Result:
    """Bit-for-bit (bytes) per array; max |a - b| in float64 over all of them."""
    detail, mismatch, exact, worst, count, diffs = [], False, True, 0.0, 0, []
    only = sorted(set(a) ^ set(b))
    if only:
        mismatch = True
        detail.append(f"{len(only)} array(s) in one tree only, e.g. {only[:3]}")
    for k in sorted(set(a) & set(b)):
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape or x.dtype != y.dtype:
            mismatch = True
            detail.append(f"{k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
            continue
        count += x.size
        if x.tobytes() == y.tobytes():
            continue
        exact = False
        if x.dtype.kind in "fc":
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                mismatch = True
                detail.append(f"{k}: NaN in different places")
            d = float(np.nanmax(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
        else:  # integer / bool arrays (token ids, masks): any change is a difference
            mismatch = True
            d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
        diffs.append((d, k))
        worst = max(worst, d)
    diffs.sort(reverse=True)
    detail += [f"{k}: {d:.3g}" for d, k in diffs[:3]]
    return judge(exact, worst, count, tol, detail, mismatch)


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """JSON leaves by path; keys that hold timings/throughput/memory left out."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not VOLATILE.search(str(k)):
                out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


def compare_json(a, b, tol: float) -> Result:
    """Numbers: exact or within tol; strings, booleans and nulls: equal."""
    fa, fb = flatten(a), flatten(b)
    detail, mismatch, exact, worst, diffs = [], False, True, 0.0, []
    only = sorted(set(fa) ^ set(fb))
    if only:
        mismatch = True
        detail.append(f"{len(only)} value(s) in one tree only, e.g. {only[:3]}")
    common = sorted(set(fa) & set(fb))
    for k in common:
        x, y = fa[k], fb[k]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        if numbers:
            if x == y or (x != x and y != y):  # NaN == NaN here
                continue
            exact = False
            d = abs(float(x) - float(y))
            if d != d:
                mismatch, d = True, float("inf")
            diffs.append((d, k))
            worst = max(worst, d)
        elif x != y:
            exact, mismatch = False, True
            detail.append(f"{k}: {str(x)[:40]!r} vs {str(y)[:40]!r}")
    diffs.sort(reverse=True)
    detail = detail[:3] + [f"{k}: {d:.3g}" for d, k in diffs[:3]]
    return judge(exact, worst, len(common), tol, detail, mismatch)


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def compare_weights(a: Path, b: Path, tol: float) -> Result:
    if hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest():
        n = sum(v.size for v in load_safetensors(a).values())
        return Result("EQUAL", 0.0, n, ["safetensors files byte-identical"])
    r = compare_arrays(load_safetensors(a), load_safetensors(b), tol)
    if r.status == "EQUAL":  # same tensors, different file bytes (header order, metadata)
        r.detail.insert(0, "tensors bit-identical, file bytes differ")
    return r


def combine(*results: Result) -> Result:
    order = ["EQUAL", "CLOSE", "DIFFERENT", "FAILED"]
    status = max((r.status for r in results), key=order.index)
    diffs = [r.max_diff for r in results if r.max_diff is not None]
    return Result(status, max(diffs) if diffs else None, sum(r.count for r in results),
                  [d for r in results for d in r.detail])


# ---- inputs (shared by both trees) -----------------------------------------------------------------
def generated_corpus(lines: int) -> str:
    """Documents of made-up sentences (one per line, blank line between documents), seeded."""
    rng = random.Random(0)
    words = ("the a river city old new small green house man woman child dog boat train road sea "
             "walked saw built found told gave took lived sold sang read wrote near over under into "
             "after before quickly slowly every night morning winter summer because while and but").split()
    out = []
    for i in range(lines):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(6, 18))).capitalize() + " .")
        if i % 12 == 11:
            out.append("")
    return "\n".join(out) + "\n"


def write_inputs(args, d: Path) -> dict[str, object]:
    """Write every input file once; returns what each step needs and where it came from."""
    d.mkdir(parents=True, exist_ok=True)
    info: dict[str, object] = {}
    n = 16 if args.quick else 32
    sst_dev = args.data / "glue_data" / "SST-2" / "dev.tsv"
    if sst_dev.is_file():
        rows = sst_dev.read_text(encoding="utf-8").splitlines()[1:]
        sentences = [r.split("\t")[0].strip() for r in rows if r.strip()][:n]
        info["sentences_from"] = f"SST-2 dev, first {len(sentences)}"
    else:
        sentences = FALLBACK_SENTENCES[:n]
        info["sentences_from"] = f"built-in list, {len(sentences)}"
    (d / "sentences.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    info["sentences"] = d / "sentences.txt"

    wiki = args.data / "wikitext-2" / "wiki.valid.tokens"
    lines = 150 if args.quick else 300
    if wiki.is_file():
        corpus = d / "corpus.tokens"  # .tokens: read as WikiText (' = Title = ' starts a document)
        corpus.write_text("".join(wiki.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]), encoding="utf-8")
        info["corpus_from"] = f"WikiText-2 valid, first {lines} lines"
    else:
        corpus = d / "corpus.txt"
        corpus.write_text(generated_corpus(lines), encoding="utf-8")
        info["corpus_from"] = f"{lines} generated sentences"
    info["corpus"] = corpus

    sst = args.data / "glue_data" / "SST-2"
    if (sst / "train.tsv").is_file() and (sst / "dev.tsv").is_file():
        out = d / "glue" / "SST-2"
        out.mkdir(parents=True, exist_ok=True)
        dev_rows = 100 if args.quick else 200
        train = (sst / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        dev = (sst / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (out / "train.tsv").write_text("".join(train[:4001]), encoding="utf-8")  # header + 4,000
        (out / "dev.tsv").write_text("".join(dev[: dev_rows + 1]), encoding="utf-8")
        info["sst2"] = d / "glue"
        info["sst2_from"] = f"SST-2 train first 4000 (256 drawn), dev first {dev_rows}"

    conll = args.data / "conll2003"
    if (conll / "eng.train").is_file() and (conll / "eng.testa").is_file():
        out = d / "conll2003"
        out.mkdir(parents=True, exist_ok=True)
        n_train, n_dev = (100, 50) if args.quick else (200, 100)
        (out / "eng.train").write_text("\n\n".join(conll_sentences(conll / "eng.train")[:n_train]) + "\n", encoding="utf-8")
        (out / "eng.testa").write_text("\n\n".join(conll_sentences(conll / "eng.testa")[:n_dev]) + "\n", encoding="utf-8")
        info["conll"] = out
        info["conll_from"] = f"CoNLL-2003 eng.train first {n_train} sentences, eng.testa first {n_dev}"

    squad = args.data / "squad" / "dev-v1.1.json"
    if squad.is_file():
        articles = json.loads(squad.read_text(encoding="utf-8"))["data"]
        paras = 2 if args.quick else 4

        def cut(arts, k):
            return [dict(a, paragraphs=a["paragraphs"][:k]) for a in arts]

        # no train-v1.1.json here: train on other dev articles, answer the first two
        predict, train = cut(articles[:2], paras), cut(articles[2:6], 10)
        (d / "squad-predict.json").write_text(json.dumps({"version": "1.1", "data": predict}), encoding="utf-8")
        (d / "squad-train.json").write_text(json.dumps({"version": "1.1", "data": train}), encoding="utf-8")
        q = sum(len(p["qas"]) for a in predict for p in a["paragraphs"])
        info["squad"] = d
        info["squad_from"] = (f"SQuAD 1.1 dev: train on articles 3-6 (64 questions drawn), "
                              f"predict the first {paras} paragraphs of articles 1-2 ({q} questions)")
    return info


# ---- children: what runs inside a tree ----------------------------------------------------------
def child_import():
    import bertkit

    tree = Path(os.environ["PARITY_TREE"]).resolve()
    where = Path(bertkit.__file__).resolve()
    if tree not in where.parents:
        raise SystemExit(f"bertkit came from {where}, not from the tree {tree}")
    import torch

    torch.set_num_threads(1)
    return bertkit, torch


def optimize(model):
    """The CPU serve path, after the move and before it. Returns the model and which API was used."""
    try:
        from bertkit.cpu import optimize_for_cpu
    except ImportError as new_error:
        try:
            from bertkit.packed_linear import pack_linear_weights
            from bertkit.scripted_encoder import use_scripted_encoder
        except ImportError as old_error:  # neither API: say why the new one failed too
            raise ImportError(f"bertkit.cpu.optimize_for_cpu: {new_error}; old API: {old_error}") from new_error
        return use_scripted_encoder(pack_linear_weights(model)), "use_scripted_encoder(pack_linear_weights(m))"
    out = optimize_for_cpu(model)
    return (model if out is None else out), "bertkit.cpu.optimize_for_cpu(m)"


def child_outputs(sentences_file: str, out: str, serve: bool) -> None:
    bertkit, torch = child_import()
    model = bertkit.load(MODEL)
    model.eval()
    tok = model.tokenizer
    api = "plain"
    if serve:
        model, api = optimize(model)
    sentences = Path(sentences_file).read_text(encoding="utf-8").splitlines()
    arrays = {}
    with torch.no_grad():
        for i, s in enumerate(sentences):
            seq, pooled = model(tok([s]))
            arrays[f"batch1/seq/{i:03d}"] = seq[0].numpy().copy()
            arrays[f"batch1/pooled/{i:03d}"] = pooled[0].numpy().copy()
        for start in range(0, len(sentences), 8):
            batch = tok(sentences[start : start + 8])
            seq, pooled = model(batch)
            for j, length in enumerate(batch.valid_lengths.tolist()):
                arrays[f"batch8/seq/{start + j:03d}"] = seq[j, :length].numpy().copy()  # real tokens only
                arrays[f"batch8/pooled/{start + j:03d}"] = pooled[j].numpy().copy()
                arrays[f"batch8/ids/{start + j:03d}"] = batch.input_ids[j, :length].numpy().copy()
    np.savez(out, **arrays)
    print(json.dumps({"api": api, "bertkit": bertkit.__file__}))


def child_time(sentences_file: str, passes: int, warmup: int) -> None:
    bertkit, torch = child_import()
    model = bertkit.load(MODEL)
    model.eval()
    tok = model.tokenizer
    sentences = Path(sentences_file).read_text(encoding="utf-8").splitlines()
    singles = [tok([s]) for s in sentences]  # tokenized once: the forward pass alone is timed
    big = tok((sentences * (32 // len(sentences) + 1))[:32])

    def run_singles():
        for b in singles:
            model(b)

    def measure(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    result = {}
    with torch.no_grad():
        result["plain batch 1"] = measure(run_singles)
        result["plain batch 32"] = measure(lambda: model(big))
        model, _ = optimize(model)
        result["serve path batch 1"] = measure(run_singles)
    print(json.dumps(result))


# ---- steps --------------------------------------------------------------------------------------
@dataclass
class Line:
    step: str
    compared: str
    result: Result | None  # None: an informational line (speed)
    note: str = ""


class Parity:
    def __init__(self, args, before: Tree, after: Tree, inputs: dict):
        self.args, self.trees, self.inputs = args, (before, after), inputs
        self.run = Runner(args.work, args.step_timeout)
        self.lines: list[Line] = []

    def out(self, tree: Tree, name: str) -> Path:
        d = self.args.work / "runs" / tree.label / name
        if d.exists():
            shutil.rmtree(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        return d

    def report(self, line: Line) -> None:
        self.lines.append(line)
        r = line.result
        if r is None:
            print(f"{line.step:<26} {line.compared}  {line.note}", flush=True)
            return
        diff = "-" if r.max_diff is None else f"{r.max_diff:.3g}"
        tol = f" (tol {r.tol:g})" if r.status in ("CLOSE", "DIFFERENT") and r.tol is not None else ""
        print(f"{line.step:<26} {line.compared} [{r.count} values]  max|diff| {diff}  {r.status}{tol}"
              + (f"  {line.note}" if line.note else ""), flush=True)
        if r.status != "EQUAL":
            for d in r.detail[:6]:
                print(f"{'':<28}{d}", flush=True)

    # 1 and 2
    def model_outputs(self, serve: bool) -> None:
        name = "serve" if serve else "outputs"
        apis = {}

        def produce(t: Tree):
            out = self.out(t, name)
            out.mkdir(parents=True)
            stdout = self.run.child(t, name, "outputs", str(self.inputs["sentences"]), str(out / "outputs.npz"),
                                    *(["--serve"] if serve else []))
            apis[t.label] = json.loads(stdout.strip().splitlines()[-1])["api"]
            return load_npz(out / "outputs.npz")

        label = "2. serve path" if serve else "1. model outputs"
        compared = (f"{MODEL} seq+pooled, batch 1 and padded batches of 8 (real tokens), "
                    f"{self.inputs['sentences_from']}")
        tol = self.args.atol
        try:
            a, b = produce(self.trees[0]), produce(self.trees[1])
            r = compare_arrays(a, b, tol)
        except JobFailed as e:
            r = Result("FAILED", None, 0, [str(e)])
        r.tol = tol
        note = ""
        if serve and apis:
            note = "via " + "; ".join(f"{k}: {v}" for k, v in apis.items())
        self.report(Line(label, compared, r, note))

    def embed(self) -> None:
        def produce(t: Tree):
            out = self.out(t, "embed")
            out.mkdir(parents=True)
            common = ["embed", "--model", MODEL, "--file", str(self.inputs["sentences"]), "--batch-size", "8", "--device", "cpu"]
            self.run.bertkit(t, "embed-tokens", *common, "--pooling", "none", "--out", str(out / "tokens.jsonl"))
            self.run.bertkit(t, "embed-sentences", *common, "--pooling", "auto", "--format", "npy", "--out", str(out / "sentences.npy"))
            arrays = {"sentences(auto pooling)": np.load(out / "sentences.npy")}
            for i, rec in enumerate(read_jsonl(out / "tokens.jsonl")):
                arrays[f"tokens/{i:03d}"] = np.asarray(rec["vectors"], dtype=np.float64)
            tokens = [rec.get("tokens") for rec in read_jsonl(out / "tokens.jsonl")]
            return arrays, tokens

        try:
            (a, ta), (b, tb) = produce(self.trees[0]), produce(self.trees[1])
            r = combine(compare_arrays(a, b, self.args.atol), compare_json(ta, tb, 0.0))
        except JobFailed as e:
            r = Result("FAILED", None, 0, [str(e)])
        r.tol = self.args.atol
        self.report(Line("1. bertkit embed (CLI)", "--pooling none (jsonl token vectors) and auto (npy), batch 8", r))

    # 3
    def pretrain(self) -> None:
        steps = 10 if self.args.quick else 20
        shards, runs = {}, {}
        for t in self.trees:
            try:
                sd = self.out(t, "shards")
                self.run.bertkit(t, "pretrain-data", "pretrain-data", "--input", str(self.inputs["corpus"]),
                                 "--vocab", MODEL, "--out", str(sd), "--max-seq-length", "64",
                                 "--max-predictions-per-seq", "10", "--dupe-factor", "2", "--seed", "12345",
                                 *([] if str(self.inputs["corpus"]).endswith(".tokens") else ["--format", "docs"]),
                                 "--no-progress", "--overwrite")
                shards[t.label] = sd
                pd = self.out(t, "pretrain")
                self.run.bertkit(t, "pretrain", "pretrain", "--data", str(sd), "--layers", "2", "--hidden", "64",
                                 "--heads", "2", "--ffn", "128", "--out", str(pd), "--steps", str(steps),
                                 "--batch-size", "8", "--lr", "1e-3", "--seed", "0", "--log-interval", "1",
                                 "--ckpt-interval", "1000", "--device", "cpu", "--no-progress")
                runs[t.label] = pd
            except JobFailed as e:
                runs.setdefault("failed", str(e))
        tol = self.args.train_atol
        b, a = self.trees[0].label, self.trees[1].label
        # shards
        if b in shards and a in shards:
            arrays = [{f"{p.name}/{k}": v for p in sorted(shards[x].glob("*.npz")) for k, v in load_npz(p).items()} for x in (b, a)]
            stats = [json.loads((shards[x] / "stats.json").read_text()) for x in (b, a)]
            r = combine(compare_arrays(*arrays, 0.0), compare_json(*stats, 0.0))
        else:
            r = Result("FAILED", None, 0, [runs.get("failed", "")])
        r.tol = 0.0
        self.report(Line("3. pretrain-data", f"shard arrays + stats.json, {self.inputs['corpus_from']}, MiniLM vocab", r))
        # losses and weights
        if b in runs and a in runs:
            m = [read_jsonl(runs[x] / "metrics.jsonl") for x in (b, a)]
            r = compare_json(*m, tol)
            r.tol = tol
            steps_logged = sum(1 for rec in m[0] if "loss" in rec)
            self.report(Line("3. pretrain losses", f"metrics.jsonl, {steps_logged} logged steps (loss, mlm/nsp loss+accuracy, lr), "
                             f"2x64 model, {steps} steps", r))
            r = compare_weights(*(runs[x] / "final" / "model.safetensors" for x in (b, a)), tol=tol)
        else:
            r = Result("FAILED", None, 0, [runs.get("failed", "")])
            r.tol = tol
            self.report(Line("3. pretrain losses", "metrics.jsonl", r))
            r = Result("FAILED", None, 0, [runs.get("failed", "")])
        r.tol = tol
        self.report(Line("3. pretrain weights", "final/model.safetensors", r))

    # 4
    def finetune_job(self, name: str, compared: str, argv: list[str], extra_files: list[str]) -> None:
        outs = {}
        try:
            for t in self.trees:
                d = self.out(t, name)
                self.run.bertkit(t, name, *argv, "--out", str(d))
                outs[t.label] = d
        except JobFailed as e:
            for what in ("scores", "weights"):
                r = Result("FAILED", None, 0, [str(e)])
                r.tol = self.args.train_atol
                self.report(Line(f"4. {name} {what}", compared, r))
            return
        b, a = (outs[t.label] for t in self.trees)
        tol = self.args.train_atol
        parts = [compare_json(json.loads((b / "eval_results.json").read_text()),
                              json.loads((a / "eval_results.json").read_text()), tol),
                 compare_json(read_jsonl(b / "metrics.jsonl"), read_jsonl(a / "metrics.jsonl"), tol)]
        for f in extra_files:
            parts.append(compare_json(json.loads((b / f).read_text()), json.loads((a / f).read_text()), tol))
        r = combine(*parts)
        r.tol = tol
        score = json.loads((a / "eval_results.json").read_text())
        headline = {k: score[k] for k in ("exact", "f1") if k in score} or score.get("dev", {})
        headline = {k: round(v, 4) for k, v in headline.items() if isinstance(v, (int, float))}
        self.report(Line(f"4. {name} scores", compared + ", eval_results.json + metrics.jsonl"
                         + "".join(f" + {f}" for f in extra_files), r, f"after: {headline}"))
        r = compare_weights(b / "model.safetensors", a / "model.safetensors", tol)
        r.tol = tol
        self.report(Line(f"4. {name} weights", "saved model.safetensors", r))

    def finetunes(self) -> None:
        common = ["--model", MODEL, "--epochs", "1", "--seed", "0", "--threads", "1", "--device", "cpu", "--quiet"]
        if "sst2" in self.inputs:
            self.finetune_job("finetune sst-2", self.inputs["sst2_from"],
                              ["finetune", "--task", "sst-2", "--data-dir", str(self.inputs["sst2"]), *common,
                               "--max-train-examples", "256", "--batch-size", "32", "--max-len", "64", "--lr", "1e-4"], [])
        else:
            print("4. finetune sst-2          skipped: no glue_data/SST-2 under --data", flush=True)
        if "conll" in self.inputs:
            self.finetune_job("finetune conll2003", self.inputs["conll_from"],
                              ["finetune", "--task", "conll2003", "--data-dir", str(self.inputs["conll"]), *common,
                               "--batch-size", "16", "--max-len", "64", "--lr", "3e-4"], [])
        else:
            print("4. finetune conll2003      skipped: no conll2003 under --data", flush=True)
        if "squad" in self.inputs:
            d = self.inputs["squad"]
            self.finetune_job("squad", self.inputs["squad_from"],
                              ["squad", "--train", str(d / "squad-train.json"), "--predict", str(d / "squad-predict.json"),
                               *common, "--max-train-examples", "64", "--batch-size", "16", "--max-seq-length", "256",
                               "--doc-stride", "128"], ["predictions.json", "nbest_predictions.json"])
        else:
            print("4. squad                   skipped: no squad/dev-v1.1.json under --data", flush=True)

    # 5
    def speed(self) -> None:
        rounds, passes = (3, 3) if self.args.quick else (self.args.rounds, 5)
        per_round: list[dict[str, dict[str, float]]] = []  # round -> tree -> measure -> seconds
        failed = ""
        for r in range(rounds):
            order = self.trees if r % 2 == 0 else self.trees[::-1]  # ABBA: drift in the machine's load cancels
            per_round.append({})
            for t in order:
                try:
                    stdout = self.run.child(t, f"time-{r}", "time", str(self.inputs["sentences"]), str(passes), "2")
                except JobFailed as e:
                    failed = str(e)
                    continue
                per_round[-1][t.label] = json.loads(stdout.strip().splitlines()[-1])
        b, a = (t.label for t in self.trees)
        paired = [r for r in per_round if b in r and a in r]  # rounds where both trees ran
        n = len(Path(self.inputs["sentences"]).read_text().splitlines())
        for k in (paired[0][b] if paired else {}):
            tb, ta = [r[b][k] for r in paired], [r[a][k] for r in paired]
            mb, ma = statistics.median(tb), statistics.median(ta)
            in_round = statistics.median(x / y for x, y in zip(ta, tb))
            unit = f"per pass over {n} sentences" if "batch 1" in k else "per forward of 32 sentences"
            per = "/".join(f"{x * 1e3:.1f}" for x in tb), "/".join(f"{x * 1e3:.1f}" for x in ta)
            self.report(Line(f"5. speed {k}", f"{unit}, {len(paired)} rounds x {passes} passes, 1 thread:", None,
                             f"before {mb * 1e3:.1f} ms, after {ma * 1e3:.1f} ms, ratio after/before {ma / mb:.3f} "
                             f"(median of per-round ratios {in_round:.3f})  (round medians ms: before {per[0]}; after {per[1]})"))
        if failed:
            print(f"5. speed: a timing run failed: {failed}", flush=True)

    def summary(self) -> bool:
        print("\n| step | compared | max abs diff | result |\n|---|---|---:|---|")
        ok = True
        for line in self.lines:
            r = line.result
            if r is None:
                print(f"| {line.step} | {line.compared.rstrip(':')} | - | {line.note.split('  (')[0]} |")
                continue
            ok &= r.status in ("EQUAL", "CLOSE")
            diff = "-" if r.max_diff is None else f"{r.max_diff:.3g}"
            tol = f" (tol {r.tol:g})" if r.status in ("CLOSE", "DIFFERENT") and r.tol is not None else ""
            print(f"| {line.step} | {line.compared} | {diff} | {r.status}{tol} |")
        return ok


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "outputs":
            child_outputs(rest[0], rest[1], "--serve" in rest[2:])
        elif kind == "time":
            child_time(rest[0], int(rest[1]), int(rest[2]))
        else:
            raise SystemExit(f"unknown child {kind}")
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--before", required=True, help="commit (or tree directory) before the move")
    parser.add_argument("--after", help="commit or tree directory after the move (default: this working tree)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/parity"), help="worktrees, inputs, outputs, logs (default /tmp/parity)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="glue_data, conll2003, squad, wikitext-2 (default ../shared/data); what is missing is generated or skipped")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer steps and timing rounds")
    parser.add_argument("--only", default="12345", help="steps to run, e.g. 123 (default all: 12345)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds per tree (default 5; --quick: 3)")
    parser.add_argument("--atol", type=float, default=1e-5, help="CLOSE bound for model outputs (default 1e-5)")
    parser.add_argument("--train-atol", type=float, default=1e-4,
                        help="CLOSE bound for losses, scores and trained weights (default 1e-4)")
    parser.add_argument("--step-timeout", type=int, default=900, help="seconds one job may take (default 900)")
    parser.add_argument("--keep-worktrees", action="store_true", help="keep worktrees this run added")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)

    started = time.time()
    trees = []
    try:
        trees.append(materialise(args.before, "before", args.work))
        trees.append(materialise(args.after, "after", args.work))
        import torch  # only for the header: the parent never imports bertkit

        print(f"before: {trees[0].path}  {trees[0].described}")
        print(f"after:  {trees[1].path}  {trees[1].described}")
        print(f"python {sys.executable}, torch {torch.__version__}, 1 thread, CPU; work {args.work}; "
              f"tolerances: outputs {args.atol:g}, training {args.train_atol:g}{'; --quick' if args.quick else ''}\n", flush=True)
        inputs = write_inputs(args, args.work / "inputs")
        p = Parity(args, trees[0], trees[1], inputs)
        if "1" in args.only:
            p.model_outputs(serve=False)
            p.embed()
        if "2" in args.only:
            p.model_outputs(serve=True)
        if "3" in args.only:
            p.pretrain()
        if "4" in args.only:
            p.finetunes()
        if "5" in args.only:
            p.speed()
        ok = p.summary()
        print(f"\n{'all steps EQUAL or CLOSE' if ok else 'NOT all steps EQUAL or CLOSE'}; "
              f"wall time {time.time() - started:.0f} s; logs in {args.work / 'logs'}")
        return 0 if ok else 1
    finally:
        for t in trees:
            if t.created and not args.keep_worktrees:
                subprocess.run(["git", "worktree", "remove", "--force", str(t.path)], cwd=REPO, check=False)


if __name__ == "__main__":
    sys.exit(main())
