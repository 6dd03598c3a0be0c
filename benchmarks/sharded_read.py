"""How much of the pretraining data each rank of a data-parallel job reads, and that the global batches
stay the same: `PretrainingLoader.rank_batches` for world sizes 1 and 8 (or `--worlds`).

    python benchmarks/sharded_read.py [--data DIR] [--instances 4000] [--batch-size 256] [--accumulate 1]
                                      [--worlds 1,8] [--epochs 1] [--dynamic] [--gloo]

Without `--data` it writes a shard directory of `--instances` random instances (max_seq_length 128,
20 predictions; 8 shards; 10% of the instances short, the rest full length, as `short_seq_prob`
makes them) with bertkit's own shard writer, masked unless `--dynamic`.

For every world size, each rank (one loader per rank, all in this process) runs `rank_batches` for
the epochs; its `bytes_read` is the array data it took from the shard files (all `valid_lengths`,
then its own rows). The micro-batches of all ranks are laid end to end in the order
(m * world + rank), re-padded, and hashed; each hash must equal that of the 1-process loader's
global batch (`iter_epoch`). `--gloo` also runs 8 processes (torch.multiprocessing, gloo): each
builds its own `rank_batches`, the micro-batches of each global batch are all-gathered, every rank
hashes the reassembled batch, and rank 0 gathers all hashes (all_gather_object) and compares them.

Prints a markdown table: world size, bytes read per rank (min / median / max), share of the 1-rank
bytes, and whether every global batch equals the 1-rank one (number compared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bertkit.data.loader import BATCH_KEYS, PretrainingLoader  # noqa: E402
from bertkit.data.masking import MaskingVocab, mask_tokens  # noqa: E402
from bertkit.data.shards import shard_name, write_shard, write_stats  # noqa: E402

T, P = 128, 20


def make_shards(out: Path, instances: int, dynamic: bool, shards: int = 8, seed: int = 0) -> Path:
    """Random `[CLS] A [SEP] B [SEP]` instances, written with `write_shard`."""
    out.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(1000)] + [f"##p{i}" for i in range(200)]
    (out / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    vocab = {t: i for i, t in enumerate(tokens)}
    masking = MaskingVocab.from_vocab(vocab)
    rng = np.random.default_rng(seed)
    sizes = np.diff(np.linspace(0, instances, shards + 1).astype(int))
    for k, n in enumerate(sizes.tolist()):
        valid = np.where(rng.random(n) < 0.1, rng.integers(8, T, n), T).astype(np.int32)
        ids = rng.integers(5, len(tokens), (n, T)).astype(np.int32)
        ids[np.arange(T)[None, :] >= valid[:, None]] = 0
        first = rng.integers(2, valid - 3)
        seg = ((np.arange(T)[None, :] > first[:, None]) & (np.arange(T)[None, :] < valid[:, None])).astype(np.int32)
        rows = np.arange(n)
        ids[rows, 0], ids[rows, first], ids[rows, valid - 1] = vocab["[CLS]"], vocab["[SEP]"], vocab["[SEP]"]
        arrays = {"input_ids": ids, "segment_ids": seg}
        if not dynamic:
            m = mask_tokens(ids, valid, masking, rng, 0.15, P)
            arrays = {"input_ids": m.input_ids, "segment_ids": seg, "masked_lm_positions": m.positions,
                      "masked_lm_ids": m.labels, "masked_lm_weights": m.weights}
        arrays["next_sentence_labels"] = rng.integers(0, 2, n).astype(np.int32)
        arrays["valid_lengths"] = valid
        write_shard(out / shard_name(k), arrays)
    write_stats(out, {"instances": instances, "dynamic_masking": dynamic,
                      "settings": {"max_seq_length": T, "max_predictions_per_seq": P, "masked_lm_prob": 0.15,
                                   "whole_word_mask": False, "vocab_size": len(tokens)}})
    return out


def batch_hash(micro: list[dict]) -> str:
    """sha256 of a batch given as micro-batches in order: every key, each part zero-padded to a common
    width, then stacked (one micro-batch = a global batch as it is)."""
    h = hashlib.sha256()
    for k in BATCH_KEYS:
        parts = [np.asarray(m[k]) for m in micro]
        if parts[0].ndim == 2:
            width = max(a.shape[1] for a in parts)
            parts = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in parts]
        a = np.ascontiguousarray(np.concatenate(parts))
        h.update(f"{k}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def loader_kwargs(args) -> dict:
    return dict(batch_size=args.batch_size, seed=args.seed, drop_last=args.drop_last)


def reference(args) -> tuple[list[str], int]:
    """Hashes of the 1-process global batches of every epoch, and that loader's bytes_read."""
    loader = PretrainingLoader(args.data, **loader_kwargs(args))
    hashes = [batch_hash([{k: v.numpy() for k, v in b.items()}]) for e in range(args.epochs) for b in loader.iter_epoch(e)]
    return hashes, loader.bytes_read


def in_process(args, world: int) -> tuple[list[int], list[str]]:
    """Every rank's bytes_read and the hash of each reassembled global batch, ranks run in lockstep."""
    loaders = [PretrainingLoader(args.data, **loader_kwargs(args)) for _ in range(world)]
    hashes = []
    for e in range(args.epochs):
        streams = [ld.rank_batches(e, r, world, args.accumulate) for r, ld in enumerate(loaders)]
        for per_rank in zip(*streams):
            ordered = [per_rank[r][m] for m in range(args.accumulate) for r in range(world)]
            hashes.append(batch_hash([{k: v.numpy() for k, v in part.items()} for part in ordered]))
    return [ld.bytes_read for ld in loaders], hashes


def _gloo_worker(rank: int, world: int, port: int, args, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    loader = PretrainingLoader(args.data, **loader_kwargs(args))
    hashes = []
    for e in range(args.epochs):
        for micro in loader.rank_batches(e, rank, world, args.accumulate):
            mine = [{k: v.numpy() for k, v in part.items()} for part in micro]
            everyone = [None] * world
            dist.all_gather_object(everyone, mine)
            ordered = [everyone[r][m] for m in range(args.accumulate) for r in range(world)]
            hashes.append(batch_hash(ordered))
    gathered = [None] * world
    dist.all_gather_object(gathered, {"bytes_read": loader.bytes_read, "hashes": hashes})
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def gloo(args, world: int) -> tuple[list[int], list[list[str]]]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(_gloo_worker, args=(world, port, args, out), nprocs=world, join=True)
        gathered = json.loads(Path(out).read_text())
    return [g["bytes_read"] for g in gathered], [g["hashes"] for g in gathered]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a shard directory (default: make one in a temporary directory)")
    parser.add_argument("--instances", type=int, default=4000, help="instances to make without --data")
    parser.add_argument("--dynamic", action="store_true", help="make shards without masks (dynamic masking)")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--worlds", default="1,8", help="comma-separated world sizes (1 is always run)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop-last", action="store_true")
    parser.add_argument("--gloo", action="store_true", help="also run 8 processes with a gloo process group")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            args.data = make_shards(Path(tmp) / "shards", args.instances, args.dynamic)
        probe = PretrainingLoader(args.data, **loader_kwargs(args))
        print(f"data: {args.data}: {len(probe.shards)} shards, {sum(probe.shard_sizes)} instances, "
              f"{'dynamic' if probe.dynamic_masking else 'static'} masking; batch size {args.batch_size}, "
              f"accumulate {args.accumulate}, {args.epochs} epoch(s), {len(probe)} global batches per epoch\n")
        want, one_bytes = reference(args)
        rows = []
        worlds = sorted({1, *(int(w) for w in args.worlds.split(","))})
        for world in worlds:
            read, got = in_process(args, world)
            rows.append((f"{world}", read, sum(a == b for a, b in zip(got, want)) if len(got) == len(want) else 0, len(want)))
        if args.gloo:
            read, per_rank = gloo(args, 8)
            same = all(h == per_rank[0] for h in per_rank) and len(per_rank[0]) == len(want)
            rows.append(("8 (gloo, 8 processes)", read, sum(a == b for a, b in zip(per_rank[0], want)) if same else 0, len(want)))

    print("| world size | bytes read per rank (min / median / max) | share of 1-rank | global batches equal to 1-rank |")
    print("|---|---|---|---|")
    for name, read, equal, total in rows:
        lo, hi = min(read) / one_bytes, max(read) / one_bytes
        shares = f"{lo:.3f}" if lo == hi else f"{lo:.3f}-{hi:.3f}"
        verdict = "yes" if equal == total else "NO"
        print(f"| {name} | {min(read):,} / {int(statistics.median(read)):,} / {max(read):,} | {shares} | "
              f"{verdict} ({equal}/{total}) |")
    print(f"\n1-process `iter_epoch` read {one_bytes:,} bytes.")


if __name__ == "__main__":
    main()
