"""``reranker ltr log-features|fit``: learning the blend from judged queries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reranker.cli.common import (
    RerankerGroup,
    alias_meta,
    alias_rescore,
    indexing_tools,
    rescore_encoder,
)
from reranker.config import MODEL_VARIANTS

if TYPE_CHECKING:
    from reranker.blend.blends import LinearBlend

# --------------------------------------------------------------------------- ltr


@click.group(cls=RerankerGroup)
def ltr() -> None:
    """Learn the blend of relevance with authority, freshness and popularity.

    `ltr log-features` writes the features of every candidate in the window for the judged
    queries of a split; `ltr fit` learns a linear or LambdaMART blend on the train file,
    selecting on the dev file; `eval --modes ...,blend --blend FILE` reports it.
    """


@dataclass(frozen=True)
class LogFeaturesArgs:
    """``ltr_log_features``'s options, as click parsed them."""

    dataset: Path
    split: str
    output: Path
    alias: str | None
    window: int
    rerank_base: str
    signals: str | None
    model: Path | None
    variant: str | None
    max_queries: int | None
    progress: bool


@ltr.command("log-features")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--split", default="train", show_default=True)
@click.option("--output", required=True, type=click.Path(path_type=Path), help="JSONL file.")
@click.option("--alias", default=None, help="[default: beir-<dataset name>]")
@click.option("--window", default=100, show_default=True, help="Candidates per query.")
@click.option(
    "--rerank-base",
    type=click.Choice(["bm25", "dense", "hybrid"]),
    default="hybrid",
    show_default=True,
)
@click.option("--signals", default=None, help="Preset or JSON file [default: the dataset's].")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Cross-encoder.")
@click.option("--variant", type=click.Choice(MODEL_VARIANTS), default=None)
@click.option("--max-queries", type=int, default=None, help="Only the first N judged queries.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def ltr_log_features(ctx: click.Context, /, **options: Any) -> None:
    """Write the blend's features of every window candidate of DATASET's judged queries.

    One JSON object per candidate (qid, doc_id, label, rank, features, defaults); a
    FILE.meta.json beside it records the signal config, window and model, for `ltr fit`.
    A multi-task model (`train --heads`) adds its heads' predictions as the features
    predicted_<head>, so a blend can be fitted for documents whose signals are missing.
    """
    run_log_features(ctx, LogFeaturesArgs(**options))


def run_log_features(ctx: click.Context, a: LogFeaturesArgs) -> None:
    from tqdm import tqdm

    from reranker.blend.features import feature_names_for
    from reranker.blend.signals import PRESETS, load_signal_config
    from reranker.evaluation.runs import ensure_dataset_index, judged_queries, query_vectors
    from reranker.rerank.cache import CachedScorer
    from reranker.rerank.heads import predicted_feature
    from reranker.rerank.pipeline import QueryPath, build_pipeline
    from reranker.training.ltr import log_features

    queries, qrels = judged_queries(a.dataset, a.split, limit=a.max_queries)
    config = (
        load_signal_config(a.signals)
        if a.signals
        else PRESETS.get(a.dataset.name.lower(), PRESETS["none"])
    )
    names = feature_names_for(config)
    alias = a.alias or f"beir-{a.dataset.name.lower()}"
    client, embedder, cache = indexing_tools(ctx)
    ensure_dataset_index(
        client,
        a.dataset,
        alias,
        embedder,
        cache=cache,
        progress=a.progress,
        rescorer=rescore_encoder(ctx),
    )
    path = QueryPath(
        index=alias,
        base=a.rerank_base,
        window=a.window,
        model=a.model,
        variant=a.variant,
        score_cache=ctx.obj.home / "scores",
        source_fields=("title", "text", *config.source_fields),
    )
    rescore = alias_rescore(ctx, alias, alias_meta(client, alias))
    pipeline = build_pipeline(path, client, embedder, rescore=rescore)
    scorer = pipeline.scorer
    assert isinstance(scorer, CachedScorer)
    assert pipeline.first_stage is not None
    if pipeline.signal_heads:  # a multi-task model: its heads' predictions are features too
        pipeline.predict_signals = True
        names = (*names, *(predicted_feature(h) for h in pipeline.signal_heads))
    vectors = query_vectors(pipeline.first_stage, queries) if a.rerank_base != "bm25" else {}
    a.output.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with a.output.open("w", encoding="utf-8") as handle:
        ordered = tqdm(queries.items(), desc="features", unit="q", disable=not a.progress)
        for query_id, text in ordered:
            for row in log_features(pipeline, {query_id: text}, qrels, names, config, vectors):
                handle.write(json.dumps(row) + "\n")
                rows += 1
    meta = {
        "dataset": a.dataset.name,
        "split": a.split,
        "queries": len(queries),
        "window": a.window,
        "rerank_base": a.rerank_base,
        "signals": config.to_dict(),
        "features": list(names),
        "model": f"{scorer.model_id}@{scorer.version}/{scorer.variant}",
    }
    meta_path = a.output.with_name(a.output.name + ".meta.json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    click.echo(f"wrote {rows} rows for {len(queries)} queries to {a.output}")


@ltr.command("fit")
@click.argument("train_features", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--dev",
    "dev_features",
    type=click.Path(path_type=Path),
    default=None,
    help="Dev feature file (model selection, LambdaMART early stopping).",
)
@click.option(
    "--only",
    default=None,
    help="Comma-separated features the blend may use (e.g. relevance,authority,freshness).",
)
@click.option(
    "--dev-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Without a dev split: hold out this fraction of the train queries instead.",
)
@click.option(
    "--kind",
    type=click.Choice(["linear", "lambdamart"]),
    default="lambdamart",
    show_default=True,
)
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Blend file.")
@click.option(
    "--card",
    "card_model",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write the blend into this cross-encoder's model card as its default blend "
    "(`--blend model`): linear, over relevance and first_stage only.",
)
def ltr_fit(
    train_features: tuple[Path, ...],
    dev_features: Path | None,
    dev_fraction: float | None,
    only: str | None,
    kind: str,
    output: Path,
    card_model: Path | None,
) -> None:
    """Fit a blend on TRAIN_FEATURES (from `ltr log-features`; several files are pooled,
    e.g. two datasets' held-out queries), select on --dev, save it with a card (signal config,
    window, data, dev NDCG@10 against relevance alone).

    A dataset without a dev split (SciFact) holds out --dev-fraction of the train queries
    instead (a seeded hash of the query id), so the test split is still never looked at.

    For a blend that does not flatter the cross-encoder, fit it on queries the cross-encoder
    never trained on: `ltr log-features --split dev` (for SciFact, the part of train that
    training holds out).
    """
    from reranker.blend.blends import LinearBlend, save_blend
    from reranker.blend.features import BASE_FEATURES, RELEVANCE
    from reranker.errors import ConfigError
    from reranker.training.ltr import fit_blend, pool_features, read_features

    if dev_features is not None and dev_fraction is not None:
        raise ConfigError("give --dev or --dev-fraction, not both")
    features = [name.strip() for name in only.split(",") if name.strip()] if only else None
    if card_model is not None and (
        kind != "linear" or not set(features or ()) <= set(BASE_FEATURES)
    ):
        raise ConfigError(
            "--card takes a linear blend over relevance and first_stage only "
            "(--kind linear --only relevance,first_stage): a model's default must apply to "
            "any corpus, with or without signals"
        )
    first = read_features(train_features[0])
    train = pool_features(
        [(path.stem, read_features(path, first.names)) for path in train_features]
    )
    dev = read_features(dev_features, train.names) if dev_features else None
    if dev_fraction is not None:
        train, dev = train.split(dev_fraction)
    model = fit_blend(kind, train, dev, features)
    card: dict[str, Any] = {
        "only": features,
        "train": [str(path) for path in train_features],
        "dev": str(dev_features) if dev_features else None,
        "dev_fraction": dev_fraction,
        "train_queries": len(train.query_ids),
        "dev_queries": len(dev.query_ids) if dev is not None else 0,
    }
    card.update(_features_meta(train_features))
    for name, data in (("train", train), ("dev", dev)):
        if data is None:
            continue
        relevance_only = data.values[:, data.names.index(RELEVANCE)]
        card[f"{name}_ndcg@10"] = {
            "blend": data.ndcg(model.score(data.values)),
            "relevance_only": data.ndcg(relevance_only),
        }
        click.echo(
            f"{name}: NDCG@10 blend {card[f'{name}_ndcg@10']['blend']:.4f}, "
            f"relevance only {card[f'{name}_ndcg@10']['relevance_only']:.4f}"
        )
    path = save_blend(model, output, card=card)
    click.echo(f"saved {kind} blend to {path}")
    if card_model is not None:
        assert isinstance(model, LinearBlend)
        _record_default_blend(card_model, model, card)


def _features_meta(paths: Sequence[Path]) -> dict[str, Any]:
    """What the feature files' .meta.json say about how they were logged (the first file's
    signals, window and base; every file's model)."""
    metas = []
    for path in paths:
        meta_path = path.with_name(path.name + ".meta.json")
        if meta_path.is_file():
            metas.append(json.loads(meta_path.read_text(encoding="utf-8")))
    if not metas:
        return {}
    out = {k: metas[0][k] for k in ("signals", "window", "rerank_base") if k in metas[0]}
    models = sorted({m["model"] for m in metas if "model" in m})
    if models:
        out["model"] = models[0] if len(models) == 1 else models
    return out


def _record_default_blend(model_dir: Path, blend: LinearBlend, fit_card: dict[str, Any]) -> None:
    from export.card import record_default_blend
    from reranker.blend.features import BASE_FEATURES
    from reranker.models import CROSS_ENCODER_CARD

    weights = {name: float(blend.weights.get(name, 0.0)) for name in BASE_FEATURES}
    entry: dict[str, Any] = {
        "kind": "linear",
        "weights": weights,
        "bias": float(blend.bias),
        "fitted_on": fit_card["train"],
        "model": fit_card.get("model"),
        "queries": fit_card["train_queries"] + fit_card["dev_queries"],
        **{k: fit_card[k] for k in ("train_ndcg@10", "dev_ndcg@10") if k in fit_card},
    }
    record_default_blend(model_dir, CROSS_ENCODER_CARD, entry)
    click.echo(f"recorded the default blend {weights} in {model_dir / CROSS_ENCODER_CARD}")
