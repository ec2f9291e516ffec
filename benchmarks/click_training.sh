#!/usr/bin/env bash
# Issue 12: the same recipe trained on click judgments alone and on the editorial qrels
# (Stack Exchange train queries), both from all-MiniLM-L6-v2; then both measured on SE test.
# Needs `reranker es up` and the events of
#   python benchmarks/click_recovery.py --datasets stackexchange --queries 2000 --sessions 12 \
#       --keep-events runs/clicks
# (simulated clicks, not real users). Two training runs side by side, one thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
R=.venv/bin/reranker
SE=../shared/data/stackexchange
D=runs/clicks/stackexchange-clicks
mkdir -p $D/qrels
ln -sf "$(realpath $SE/corpus.jsonl)" $D/corpus.jsonl
ln -sf "$(realpath $SE/queries.jsonl)" $D/queries.jsonl
cp $SE/qrels/dev.tsv $SE/qrels/test.tsv $D/qrels/
$R judgments --events runs/clicks/stackexchange-events.jsonl --dataset $SE --model pbm \
  --min-examinations 4 --output $D/qrels/train.tsv --compare $SE/qrels/train.tsv \
  --report runs/clicks/se-judgments-pbm.json
COMMON="--first-stage-aware --max-length 192 --max-steps 250 --lr 2e-5 --head-lr 1e-3 --seed 21 --threads 1"
nohup $R train $D $COMMON --output runs/clicks/model-clicks > runs/clicks/model-clicks.log 2>&1 &
nohup $R train $SE $COMMON --output runs/clicks/model-qrels > runs/clicks/model-qrels.log 2>&1 &
wait
for v in clicks qrels; do
  $R export runs/clicks/model-$v runs/clicks/export-$v --int8 --max-length 192 --keep int8 --name se-from-$v
  $R eval $SE --modes hybrid,rerank --variant int8 --model runs/clicks/export-$v --no-progress --output runs/clicks/eval-$v.json
done
