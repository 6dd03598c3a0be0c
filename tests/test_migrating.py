"""docs/migrating.md (issue 21, item 1) is true: every `bertkit` command in its bash blocks parses
(and names tasks, shapes and zoo models bertkit knows), the blocks marked `<!-- test: run -->` run on
a tiny WikiText-style corpus, every Python block runs, and every GluonNLP 0.10 script flag, zoo name
and d2l BERT function has its place on the page.

Zoo names resolve, without any download, to the packaged all-minilm-l6-v2 placed in a throw-away
Hugging Face cache under each Hub id the zoo maps to; the commands and snippets run in one work
directory, in page order, so a snippet can read what an earlier command wrote (d2l-run/, wiki-shards/).
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, stand_in_cache

DOC = REPO / "docs" / "migrating.md"

# GluonNLP 0.10.0, scripts/bert/: every argparse flag of each script (read from the tag's sources).
GLUONNLP_FLAGS = {
    "finetune_classifier.py": """--optimizer --epochs --training_steps --batch_size --dev_batch_size --lr --epsilon
        --warmup_ratio --log_interval --max_len --round_to --seed --accumulate --gpu --task_name --bert_model
        --bert_dataset --pretrained_bert_parameters --model_parameters --output_dir --only_inference --dtype
        --early_stop --deploy --model_prefix --only_calibration --num_calib_batches --quantized_dtype --calib_mode""",
    "finetune_squad.py": """--only_predict --model_parameters --bert_model --bert_dataset --pretrained_bert_parameters
        --uncased --output_dir --epochs --training_steps --batch_size --test_batch_size --optimizer --accumulate --lr
        --warmup_ratio --log_interval --max_seq_length --round_to --doc_stride --max_query_length --n_best_size
        --max_answer_length --version_2 --null_score_diff_threshold --gpu --sentencepiece --debug --dtype
        --comm_backend --deploy --model_prefix --only_calibration --num_calib_batches --quantized_dtype --calib_mode""",
    "create_pretraining_data.py": """--input_file --output_dir --dataset_name --sentencepiece --cased --sp_nbest
        --sp_alpha --whole_word_mask --max_seq_length --max_predictions_per_seq --random_seed --dupe_factor
        --masked_lm_prob --short_seq_prob --verbose --num_workers --num_outputs""",
    "run_pretraining.py": """--ckpt_dir --log_interval --ckpt_interval --pretrained --model --dataset_name --data
        --total_batch_size --accumulate --num_steps --optimizer --start_step --lr --warmup_ratio --dtype
        --no_compute_acc --eval_interval --total_batch_size_eval --data_eval --eval_use_npz --synthetic_data
        --verbose --profile --num_buckets --raw --max_seq_length --short_seq_prob --masked_lm_prob
        --max_predictions_per_seq --cased --whole_word_mask --sentencepiece --num_dataset_workers
        --num_batch_workers --circle_length --repeat --dataset_cached --num_max_dataset_cached --phase2
        --phase1_num_steps --comm_backend --gpus""",
    "embedding.py": """--gpu --dtype --model --dataset_name --params_path --sentencepiece --max_seq_length
        --batch_size --oov_way --sentences --file --verbose""",
    "export.py": "--model_parameters --model_name --task --dataset_name --output_dir --seq_length --dropout",
}
# pretraining_utils.py has no flags: its functions are what run_pretraining.py is made of.
PRETRAINING_UTILS = ("get_model_loss", "get_pretrain_data_npz", "get_pretrain_data_text", "save_parameters",
                     "save_states", "evaluate", "generate_dev_set")
# The BERT table of GluonNLP 0.10's model zoo page (scripts/bert/index.rst).
GLUONNLP_ZOO = ["bert_12_768_12/" + d for d in """book_corpus_wiki_en_uncased book_corpus_wiki_en_cased
    openwebtext_book_corpus_wiki_en_uncased wiki_multilingual_uncased wiki_multilingual_cased wiki_cn_cased
    scibert_scivocab_uncased scibert_scivocab_cased scibert_basevocab_uncased scibert_basevocab_cased
    biobert_v1.0_pmc_cased biobert_v1.0_pubmed_cased biobert_v1.0_pubmed_pmc_cased biobert_v1.1_pubmed_cased
    clinicalbert_uncased kobert_news_wiki_ko_cased""".split()] + [
    "bert_24_1024_16/book_corpus_wiki_en_uncased", "bert_24_1024_16/book_corpus_wiki_en_cased"]
D2L_FUNCTIONS = ("get_tokens_and_segments", "BERTEncoder", "MaskLM", "NextSentencePred", "BERTModel", "_read_wiki",
                 "_get_next_sentence", "_get_nsp_data_from_paragraph", "_replace_mlm_tokens", "load_data_wiki",
                 "train_bert", "get_bert_encoding")

ZOO_NAME = re.compile(r"^bert_\d+_\d+_\d+/\S+$")
SEPARATORS = {"|", "||", "&&", ";", "&"}


# ---- reading the page -------------------------------------------------------------------------
@dataclass
class Block:
    lang: str
    line: int  # line number of the block's first body line
    body: str
    marker: str | None  # the `<!-- test: ... -->` comment right above the fence


@dataclass
class Command:
    line: int
    text: str  # the command as the page shows it (continuations joined)
    argv: list[str]  # the arguments after `bertkit`
    marker: str | None


def read_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        lang = lines[i][3:].strip()
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        m = re.fullmatch(r"<!--\s*test:\s*(.*?)\s*-->", lines[j].strip()) if j >= 0 else None
        end = next((k for k in range(i + 1, len(lines)) if lines[k].strip() == "```"), None)
        assert end is not None, f"docs/migrating.md:{i + 1}: fence never closed"
        blocks.append(Block(lang, i + 2, "\n".join(lines[i + 1 : end]), m.group(1) if m else None))
        i = end + 1
    return blocks


def split_words(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True  # split on blanks (and the punctuation above) only: keep HOST:PORT, 'a/*.npz'
    return list(lexer)  # `#` starts a comment, as in the shell


def bertkit_argv(words: list[str]) -> list[str] | None:
    """The arguments after `bertkit` (or `python -m bertkit` / `torchrun ... -m bertkit`); None if the
    words run something else."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if words and words[0] == "bertkit":
        return words[1:]
    for k in range(len(words) - 1):
        if words[k] == "-m" and words[k + 1] == "bertkit":
            return words[k + 2 :]
    return None


def read_commands(blocks: list[Block]) -> tuple[list[Command], list[str]]:
    """Every command of the bash blocks; and the lines that run something other than bertkit."""
    found, others = [], []
    for block in (b for b in blocks if b.lang == "bash"):
        logical, start = "", None
        for offset, line in enumerate(block.body.splitlines()):
            if start is None:
                start = block.line + offset
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            words = split_words(logical)
            segment: list[str] = []
            for word in words + [";"]:
                if word not in SEPARATORS:
                    segment.append(word)
                    continue
                if segment:
                    argv = bertkit_argv(segment)
                    if argv is None:
                        others.append(f"docs/migrating.md:{start}: {logical.strip()}")
                    else:
                        found.append(Command(start, " ".join(logical.split()), argv, block.marker))
                segment = []
            logical, start = "", None
    return found, others


TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = read_blocks(TEXT)
COMMANDS, OTHER_COMMANDS = read_commands(BLOCKS)
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python"]


def section(heading_fragment: str, level: str = "###") -> str:
    """The page's text from the heading holding `heading_fragment` to the next heading of its level or above."""
    lines = TEXT.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(level + " ") and heading_fragment in line]
    assert len(starts) == 1, f"expected one {level} heading with {heading_fragment!r}, found {len(starts)}"
    stops = tuple("#" * n + " " for n in range(1, len(level) + 1))
    in_fence, end = False, len(lines)
    for i in range(starts[0] + 1, len(lines)):
        in_fence ^= lines[i].startswith("```")
        if not in_fence and lines[i].startswith(stops):  # a bash comment in a block is no heading
            end = i
            break
    return "\n".join(lines[starts[0] : end])


# ---- the page's shape -------------------------------------------------------------------------
def test_page_has_commands_and_snippets_and_only_bertkit_runs_in_bash():
    assert "## From GluonNLP" in TEXT and "## From d2l" in TEXT
    assert len(COMMANDS) >= 40 and len(PYTHON_BLOCKS) >= 10
    assert {b.lang for b in BLOCKS} <= {"bash", "python"}, "every fenced block says bash or python"
    assert not OTHER_COMMANDS, "bash blocks may only run bertkit (show other tools in comments):\n" + "\n".join(OTHER_COMMANDS)
    assert {b.marker for b in BLOCKS} <= {None, "run"}


@pytest.mark.parametrize("script", sorted(GLUONNLP_FLAGS))
def test_every_gluonnlp_flag_is_mapped(script):
    text = section(f"`{script}`")
    missing = [flag for flag in GLUONNLP_FLAGS[script].split() if f"`{flag}`" not in text and f"`{flag} " not in text]
    assert not missing, f"{script}: flags the page does not map: {', '.join(missing)}"
    if script == "run_pretraining.py":
        assert all(f"`{name}`" in text for name in PRETRAINING_UTILS)


def test_every_gluonnlp_zoo_name_is_known():
    from bertkit.zoo.names import lookup

    unknown = [name for name in GLUONNLP_ZOO if lookup(name) is None]
    assert not unknown, unknown


def test_every_d2l_function_is_mapped():
    text = section("From d2l", "##")
    table = text.split("| d2l | bertkit |")[1].split("\n\n")[0]
    missing = [f for f in D2L_FUNCTIONS if f"`{f}`" not in table]
    assert not missing, f"d2l functions missing from the mapping table: {missing}"
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    for f in D2L_FUNCTIONS:
        assert any(f"`{f}`" in h for h in headings), f"no section for d2l's {f}"


# ---- every command parses -----------------------------------------------------------------------
def check_names(name: str, args) -> list[str]:
    """What argparse cannot see: task names, shapes, zoo names and vocabulary names bertkit must know."""
    from bertkit.config import PRESETS
    from bertkit.errors import BertkitError
    from bertkit.zoo.names import ZOO, lookup, parse_shape_name

    problems = []
    if name == "finetune":
        from bertkit.cli.finetune import TAGGING_TASKS
        from bertkit.tasks.readers import get_task

        if args.task not in TAGGING_TASKS:
            try:
                get_task(args.task)
            except BertkitError as e:
                problems.append(str(e))
    if name == "pretrain" and args.config is not None and args.config not in PRESETS:
        problems.append(f"--config {args.config}: not one of {', '.join(PRESETS)}")
    if name == "convert" and args.shape is not None:
        try:
            parse_shape_name(args.shape)
        except BertkitError as e:
            problems.append(str(e))
    values = []
    for value in vars(args).values():
        values += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    for value in values:
        if ZOO_NAME.match(value):
            try:
                if lookup(value) is None:
                    problems.append(f"{value}: not a zoo name")
            except BertkitError as e:
                problems.append(str(e))
    if name == "pretrain-data" and "/" not in args.vocab and "." not in args.vocab:
        datasets = {entry.dataset for entry in ZOO.values()}
        if args.vocab not in datasets | {"all-minilm-l6-v2"}:
            problems.append(f"--vocab {args.vocab}: neither a GluonNLP vocabulary name nor a model name")
    return problems


@pytest.mark.parametrize("command", COMMANDS, ids=[f"line{c.line}" for c in COMMANDS])
def test_command_parses(command):
    from bertkit.cli import COMMANDS as SUBCOMMANDS
    from bertkit.cli import command_parser

    where = f"docs/migrating.md:{command.line}: `{command.text}`"
    assert command.argv and command.argv[0] in SUBCOMMANDS, f"{where}: not a bertkit subcommand"
    parser, _ = command_parser(command.argv[0])
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(command.argv[1:])
    except SystemExit:
        pytest.fail(f"{where} does not parse:\n{err.getvalue()}", pytrace=False)
    problems = check_names(command.argv[0], args)
    assert not problems, f"{where}: " + "; ".join(problems)


# ---- the marked commands run, then the Python blocks -----------------------------------------------
SMALLER = {"pretrain": {"--steps": "2", "--batch-size": "8"}}  # a tiny corpus has a few dozen instances


def smaller(argv: list[str]) -> list[str]:
    argv = list(argv)
    for flag, value in SMALLER.get(argv[0], {}).items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    if argv[0] == "pretrain":
        argv.append("--no-progress")
    return argv


def write_wikitext(path: Path, articles: int = 8, seed: int = 0) -> None:
    """A small corpus in WikiText-2's layout: ` = Title = ` lines, paragraphs of ` . `-spaced sentences."""
    rng = random.Random(seed)
    nouns = ("river town station bridge king army music album song film game player team season city church road "
             "school war ship island family night year century water mountain village story book crane").split()
    verbs = "crosses built played released won recorded visited described opened followed".split()
    lines = []
    for a in range(articles):
        lines += [" ", f" = Article {a} = ", " "]
        for _ in range(3):
            sentences = []
            for _ in range(rng.randint(3, 6)):
                words = [rng.choice(verbs) if k % 3 == 0 else rng.choice(nouns) for k in range(rng.randint(4, 9))]
                sentences.append("The " + " ".join(words) + " .")
            lines += [" " + " ".join(sentences) + " ", " "]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def stand_in_hub(cache: Path, model_dir: Path) -> None:
    """Every Hub repository the zoo maps a name to, as a cached snapshot of `model_dir` (symlinks)."""
    from bertkit.zoo.names import ZOO

    for repo in {entry.repo for entry in ZOO.values() if entry.repo}:
        stand_in_cache(cache, repo, model_dir)


def page_environment(mp: pytest.MonkeyPatch, workdir: Path) -> None:
    mp.chdir(workdir)
    mp.setenv("HF_HUB_CACHE", str(workdir / "hf-cache"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, minilm_dir):
    """The tiny corpus, the stand-in Hub cache, and what the marked commands write, in page order."""
    from bertkit.cli import main

    root = tmp_path_factory.mktemp("migrating")
    write_wikitext(root / "wikitext-2" / "wiki.train.tokens")
    stand_in_hub(root / "hf-cache", minilm_dir)
    ran = []
    with pytest.MonkeyPatch.context() as mp:
        page_environment(mp, root)
        for command in (c for c in COMMANDS if c.marker == "run"):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(smaller(command.argv))
            if rc != 0:
                pytest.fail(f"docs/migrating.md:{command.line}: `{command.text}` exited {rc}:\n{err.getvalue()}", pytrace=False)
            ran.append((command, out.getvalue()))
    return root, ran


def test_marked_commands_run(workdir):
    root, ran = workdir
    assert {c.argv[0] for c, _ in ran} >= {"vocab", "pretrain-data", "pretrain", "embed", "fill-mask"}
    assert (root / "d2l-run" / "final" / "model.safetensors").is_file()
    assert (root / "wiki-shards" / "stats.json").is_file()
    for command, out in ran:
        if command.argv[0] in ("embed", "fill-mask"):
            assert out.strip().startswith("{") or out.strip().startswith("["), f"{command.text}: {out[:200]!r}"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"line{b.line}" for b in PYTHON_BLOCKS])
def test_python_block_runs(block, workdir, monkeypatch):
    root, _ = workdir
    page_environment(monkeypatch, root)
    # padded with blank lines so that a traceback's line numbers are the page's
    code = compile("\n" * (block.line - 1) + block.body, "docs/migrating.md", "exec")
    exec(code, {"__name__": "migrating_snippet"})
