#!/usr/bin/env bash
# Issue 12: the multi-task run with the click-through head (docs/judgments.md "A click-through head"),
# exported from its last checkpoint (step 300, as the multi-task run of multitask_evals.sh) and
# measured: relevance on Stack Exchange test, then the blends when the signals are hidden.
# Needs `reranker es up` and runs/ct/ct from the training command in docs/judgments.md.
set -euo pipefail
cd "$(dirname "$0")/.."
R=.venv/bin/reranker
SE=../shared/data/stackexchange
[ -f runs/ct/export-ct/reranker.json ] || $R export runs/ct/ct/last runs/ct/export-ct --int8 \
  --max-length 192 --keep int8 --name reranker-minilm-l6-ct
$R eval $SE --modes rerank --variant int8 --model runs/ct/export-ct --no-progress \
  --output runs/ct/eval-ct-stackexchange.json
for split in dev test; do
  $R ltr log-features $SE --split $split --model runs/ct/export-ct --variant int8 --no-progress \
    --output runs/ct/se-$split.jsonl
done
PYTHONPATH=. .venv/bin/python benchmarks/hidden_signals.py runs/ct/se-dev.jsonl runs/ct/se-test.jsonl \
  --output benchmarks/results/multitask/hidden-signals-clickthrough.json
