#!/usr/bin/env bash
# The runs behind docs/results.md "Fine-tuning (GLUE dev)". Sequential (one job at a time on a
# 2-core machine); each run writes runs/glue/<impl>-<task>-s<seed>/eval_results.json and a log.
# Usage: scripts/finetune_results.sh JOB...   where JOB is bertkit:TASK:SEED or hf:TASK:SEED
# Hyperparameters (the same for every task and both implementations) come from the environment.
# One torch thread by default: on a shared, oversubscribed 2-core machine two OpenMP threads ran
# 2-4x slower than one (they wait on each other at every barrier).
set -u
GLUE=${GLUE:-../shared/data/glue_data}
EPOCHS=${EPOCHS:-2}; LR=${LR:-1e-4}; BS=${BS:-32}; MAXLEN=${MAXLEN:-128}; THREADS=${THREADS:-1}
mkdir -p runs/glue
for job in "$@"; do
  IFS=: read -r impl task seed <<<"$job"
  out=runs/glue/$impl-$task-s$seed
  [ -f "$out/eval_results.json" ] && { echo "skip $out (done)"; continue; }
  echo "$(date +%T) start $out"
  if [ "$impl" = bertkit ]; then
    .venv/bin/bertkit finetune --task "$task" --data-dir "$GLUE" --model all-minilm-l6-v2 --out "$out" \
      --epochs "$EPOCHS" --lr "$LR" --batch-size "$BS" --max-len "$MAXLEN" --seed "$seed" --threads "$THREADS" >"$out.log" 2>&1
  else
    .venv/bin/python benchmarks/finetune_hf_baseline.py --task "$task" --data-dir "$GLUE" --model all-minilm-l6-v2 \
      --out "$out" --epochs "$EPOCHS" --lr "$LR" --batch-size "$BS" --max-len "$MAXLEN" --seed "$seed" --threads "$THREADS" >"$out.log" 2>&1
  fi
  echo "$(date +%T) end $out rc=$?"
done
