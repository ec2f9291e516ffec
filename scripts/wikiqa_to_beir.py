#!/usr/bin/env python3
"""WikiQA train (``../shared/data/train/wikiqa_raw/WikiQA-train.tsv``) as a BEIR folder, so that
first-stage-aware training can mine hybrid windows over it like SciFact and Stack Exchange.

Provenance: the raw file is Microsoft's WikiQA corpus (Yang et al., EMNLP 2015), train split,
as recorded in ``../shared/data/README.md``; the test split is never read. Every distinct
sentence becomes a document (``title`` empty), every distinct question a query, and each
sentence labelled 1 for a question a ``train`` qrel of grade 1. Questions without a correct
sentence are dropped (no positive to learn from). Ids are stable: ``wq-<n>`` for questions in
order of first appearance, ``ws-<n>`` for sentences.

    python scripts/wikiqa_to_beir.py \
        ../shared/data/train/wikiqa_raw/WikiQA-train.tsv runs/data/wikiqa
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def convert(raw: Path, out: Path) -> tuple[int, int, int]:
    questions: dict[str, str] = {}
    sentences: dict[str, str] = {}
    qrels: dict[str, set[str]] = {}
    with raw.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            question, sentence = row["Question"].strip(), row["Sentence"].strip()
            if not question or not sentence:
                continue
            qid = questions.setdefault(question, f"wq-{len(questions)}")
            sid = sentences.setdefault(sentence, f"ws-{len(sentences)}")
            if row["Label"].strip() == "1":
                qrels.setdefault(qid, set()).add(sid)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for text, sid in sentences.items():
            handle.write(json.dumps({"_id": sid, "title": "", "text": text}) + "\n")
    with (out / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for text, qid in questions.items():
            if qid in qrels:
                handle.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with (out / "qrels" / "train.tsv").open("w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid, sids in qrels.items():
            for sid in sorted(sids):
                handle.write(f"{qid}\t{sid}\t1\n")
    return len(sentences), len(qrels), sum(len(s) for s in qrels.values())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    docs, queries, rows = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{docs} sentences, {queries} questions with a correct sentence, {rows} train qrels")
