#!/usr/bin/env bash
# The runs behind docs/results.md "Named entities (CoNLL-2003)". Sequential, one torch thread each
# (a shared 2-core machine); each run writes $OUT/<impl>-s<seed>/eval_results.json (OUT=runs/ner) and a log.
# Usage: scripts/ner_results.sh JOB...   where JOB is bertkit:SEED or hf:SEED
# Hyperparameters (the same for both implementations) come from the environment.
set -u
CONLL=${CONLL:-../shared/data/conll2003}
EPOCHS=${EPOCHS:-2}; LR=${LR:-1e-4}; BS=${BS:-32}; MAXLEN=${MAXLEN:-128}; THREADS=${THREADS:-1}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/ner}; mkdir -p "$OUT"
for job in "$@"; do
  IFS=: read -r impl seed <<<"$job"
  out=$OUT/$impl-s$seed
  [ -f "$out/eval_results.json" ] && { echo "skip $out (done)"; continue; }
  echo "$(date +%T) start $out"
  if [ "$impl" = bertkit ]; then
    "$PY" -m bertkit finetune --task conll2003 --data-dir "$CONLL" --model all-minilm-l6-v2 --out "$out" \
      --epochs "$EPOCHS" --lr "$LR" --batch-size "$BS" --max-len "$MAXLEN" --seed "$seed" --threads "$THREADS" >"$out.log" 2>&1
  else
    "$PY" benchmarks/tagging_hf_baseline.py --data-dir "$CONLL" --model all-minilm-l6-v2 --out "$out" \
      --epochs "$EPOCHS" --lr "$LR" --batch-size "$BS" --max-len "$MAXLEN" --seed "$seed" --threads "$THREADS" >"$out.log" 2>&1
  fi
  echo "$(date +%T) end $out rc=$?"
done
