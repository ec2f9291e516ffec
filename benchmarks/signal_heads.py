"""What a multi-task model's signal heads predict on documents they never trained on (issue 12).

    PYTHONPATH=. .venv/bin/python benchmarks/signal_heads.py MODEL_DIR [--variant int8]
        [--output FILE]

MODEL_DIR is an exported multi-task cross-encoder (`reranker export` of a checkpoint trained
with `reranker train --first-stage-aware --heads relevance,popularity,...`). Training masks
every document judged for a dev or test query out of the signal losses, so those documents
are held out. Each held-out answer is scored through the serving path (`Scorer`,
`score_with_signals`) paired with its own question (the query that judges it), first-stage
features at zero (the signal heads do not read them).

Stack Exchange, the answers judged for test queries:

* Spearman of the popularity head against the real ``Score``, beside the metadata baseline of
  ``benchmarks/popularity_probe.py`` (ridge on site + answer length + age at the dump), fitted
  on the answers judged for dev queries (also held out from the heads) and on every answer
  that is neither dev's nor test's, and the ridge on metadata + the head's prediction (fitted
  on the dev answers);
* the authority head against ``OwnerReputation``, the freshness head against ``CreationDate``.

SciFact (when the model has the heads): the abstracts judged for test claims, authority
against ``citations`` and freshness against ``year``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from popularity_probe import age_days, ridge_predict  # benchmarks/, this script's folder
from scipy.stats import spearmanr

from reranker.corpus import passage_text
from reranker.rerank.features import FEATURE_NAMES
from reranker.rerank.scorer import Scorer
from reranker.training.data import _read_jsonl, read_qrels
from reranker.training.heads import document_sources

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return round(float(spearmanr(a, b)[0]), 3)


def judged_pairs(dataset: Path, split: str) -> list[tuple[str, str]]:
    """(query id, doc id) of every positive judgment of ``split``, each document once."""
    seen: set[str] = set()
    pairs = []
    for qid, judged in read_qrels(dataset / "qrels" / f"{split}.tsv").items():
        for doc_id, grade in judged.items():
            if grade > 0 and doc_id not in seen:
                seen.add(doc_id)
                pairs.append((qid, doc_id))
    return pairs


def _predict(
    scorer: Scorer, dataset: Path, pairs: list[tuple[str, str]], sources: dict[str, Any]
) -> dict[str, np.ndarray]:
    queries = {str(r["_id"]): str(r["text"]) for _, r in _read_jsonl(dataset / "queries.jsonl")}
    texts = [(queries[q], passage_text(sources[d])) for q, d in pairs]
    zeros = np.zeros((len(texts), len(FEATURE_NAMES)), dtype=np.float32)
    _, predicted = scorer.score_with_signals(texts, features=zeros)
    return predicted


def stackexchange(scorer: Scorer) -> dict[str, Any]:
    dataset = DATA / "stackexchange"
    sources = document_sources(dataset)
    test_pairs = judged_pairs(dataset, "test")
    dev_pairs = judged_pairs(dataset, "dev")
    held = {d for _, d in test_pairs} | {d for _, d in dev_pairs}
    train_ids = [d for d in sources if d not in held]
    sites = sorted({s["signals"]["site"] for s in sources.values()})

    def metadata(ids: Sequence[str]) -> np.ndarray:
        rows = []
        for d in ids:
            s = sources[d]["signals"]
            rows.append(
                [
                    *(float(s["site"] == name) for name in sites),
                    float(np.log1p(len(passage_text(sources[d])))),
                    float(np.log1p(age_days(s))),
                ]
            )
        return np.array(rows)

    def log_score(ids: Sequence[str]) -> np.ndarray:
        return np.log1p(
            np.clip([float(sources[d]["signals"].get("Score") or 0) for d in ids], 0, None)
        )

    test_ids = [d for _, d in test_pairs]
    dev_ids = [d for _, d in dev_pairs]
    predicted = _predict(scorer, dataset, test_pairs, sources)
    out: dict[str, Any] = {"held_out_answers": len(test_ids), "dev_answers": len(dev_ids)}
    score = log_score(test_ids)
    if "popularity" in predicted:
        dev_predicted = _predict(scorer, dataset, dev_pairs, sources)["popularity"]
        meta_dev = ridge_predict(metadata(dev_ids), log_score(dev_ids), metadata(test_ids))
        meta_train = ridge_predict(metadata(train_ids), log_score(train_ids), metadata(test_ids))
        both = ridge_predict(
            np.hstack([metadata(dev_ids), dev_predicted[:, None]]),
            log_score(dev_ids),
            np.hstack([metadata(test_ids), predicted["popularity"][:, None]]),
        )
        out["popularity_vs_Score"] = {
            "head": _spearman(predicted["popularity"], score),
            "metadata_ridge_fitted_on_dev_answers": _spearman(meta_dev, score),
            "metadata_ridge_fitted_on_train_answers": _spearman(meta_train, score),
            "metadata_plus_head_ridge_fitted_on_dev_answers": _spearman(both, score),
            "head_within_site": {
                name: _spearman(predicted["popularity"][mask], score[mask])
                for name in sites
                for mask in [np.array([sources[d]["signals"]["site"] == name for d in test_ids])]
            },
        }
    if "authority" in predicted:
        reputation = [float(sources[d]["signals"].get("OwnerReputation") or 0) for d in test_ids]
        out["authority_vs_OwnerReputation"] = _spearman(predicted["authority"], reputation)
    if "freshness" in predicted:
        age = [-age_days(sources[d]["signals"]) for d in test_ids]
        out["freshness_vs_minus_age"] = _spearman(predicted["freshness"], age)
    return out


def scifact(scorer: Scorer) -> dict[str, Any]:
    dataset = DATA / "scifact"
    sources = document_sources(dataset)
    pairs = [(q, d) for q, d in judged_pairs(dataset, "test") if "signals" in sources[d]]
    predicted = _predict(scorer, dataset, pairs, sources)
    ids = [d for _, d in pairs]
    out: dict[str, Any] = {"held_out_abstracts": len(ids)}
    if "authority" in predicted:
        citations = [float(sources[d]["signals"].get("citations") or 0) for d in ids]
        out["authority_vs_citations"] = _spearman(predicted["authority"], citations)
    if "freshness" in predicted:
        years = [float(sources[d]["signals"].get("year") or 0) for d in ids]
        out["freshness_vs_year"] = _spearman(predicted["freshness"], years)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    scorer = Scorer(args.model, variant=args.variant)
    if not scorer.signal_heads:
        parser.error(f"{args.model} has no signal heads")
    result = {
        "model": f"{scorer.model_id}@{scorer.version}/{scorer.variant}",
        "heads": list(scorer.signal_heads),
        "stackexchange_test_answers": stackexchange(scorer),
        "scifact_test_abstracts": scifact(scorer),
    }
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
