#!/usr/bin/env bash
# Issue 12 item 3: export the multi-task (mt) and single-task control (st) continuations (their
# last checkpoints, step 300), and measure them. Needs `reranker es up` and the two runs of the
# "Multi-task heads" section of docs/judgments.md in runs/mt/mt and runs/mt/st (the control: the same
# command without --heads and --loss-weights).
set -euo pipefail
cd "$(dirname "$0")/.."
R=.venv/bin/reranker
SE=../shared/data/stackexchange
for v in mt st; do
  [ -f runs/mt/export-$v/reranker.json ] || $R export runs/mt/$v/last runs/mt/export-$v --int8 --max-length 192 --keep int8 --name reranker-minilm-l6-$v
done
for v in mt st; do
  $R eval $SE --modes hybrid,rerank --variant int8 --model runs/mt/export-$v --no-progress --output runs/mt/eval-$v-stackexchange.json
done
PYTHONPATH=. .venv/bin/python benchmarks/signal_heads.py runs/mt/export-mt --output runs/mt/signal-heads.json
for split in dev test; do
  $R ltr log-features $SE --split $split --model runs/mt/export-mt --variant int8 --no-progress --output runs/mt/se-$split.jsonl
done
PYTHONPATH=. .venv/bin/python benchmarks/hidden_signals.py runs/mt/se-dev.jsonl runs/mt/se-test.jsonl --output runs/mt/hidden-signals.json
