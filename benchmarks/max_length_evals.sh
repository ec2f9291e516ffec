#!/bin/bash
# eval --max-length curve (docs/experiments/cross-encoder.md "Max length"), one run after another, into runs/maxlen/
cd "$(dirname "$0")/.."
mkdir -p runs/maxlen
for len in 256 192 128 320; do
  for ds in scifact stackexchange; do
    out=runs/maxlen/$ds-$len.json
    [ -s "$out" ] && continue
    echo "$(date -Is) start $ds $len" >> runs/maxlen/progress.txt
    start=$(date +%s)
    PYTHONPATH=. .venv/bin/reranker eval ../shared/data/$ds --modes rerank \
      --window 100 --max-length $len --no-progress --output $out \
      > runs/maxlen/$ds-$len.log 2>&1
    rc=$?
    echo "$(date -Is) done $ds $len rc=$rc $(( $(date +%s) - start ))s load=$(cut -d' ' -f1-3 /proc/loadavg)" >> runs/maxlen/progress.txt
  done
done
echo "$(date -Is) all done" >> runs/maxlen/progress.txt
