"""``reranker eval``: every judged query of a BEIR-layout dataset through every mode."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reranker.config import MODEL_VARIANTS

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from reranker.blend.blends import Blend
    from reranker.blend.signals import SignalConfig
    from reranker.evaluation.runs import EvalReport, RunFunction
    from reranker.rerank.cascade import Cascade
    from reranker.rerank.pipeline import QueryPath
    from reranker.rerank.rescore import Rescore
    from reranker.rerank.scorer import PairScorer
    from reranker.retrieval.embed_cache import TextEncoder

from reranker.cli.common import (
    alias_meta,
    alias_rescore,
    default_model_dir,
    diversity_options,
    hybrid_options,
    indexing_tools,
    parse_diversity,
    parse_hybrid,
    passages_for,
    passages_option,
    rescore_encoder,
    scorer_url_option,
)
from reranker.rerank.capabilities import FromFolder, max_length_of

# --------------------------------------------------------------------------- eval


@dataclass(frozen=True)
class EvalArgs:
    """``eval_cmd``'s options, as click parsed them."""

    dataset: Path
    split: str
    modes: str
    alias: str | None
    depth: int
    fusion: str
    rank_constant: int
    normalization: str
    weights: str
    window: int
    rerank_base: str
    model: Path | None
    variant: str | None
    max_length: int | None
    scorer_urls: tuple[str, ...]
    cascade_model: Path | None
    cascade_k: int | None
    reindex: bool
    output: Path | None
    blend: str | None
    signals: str | None
    max_queries: int | None
    record: bool
    score_cache: bool
    passages: str | None
    diversity: float | None
    diversity_method: str | None
    duplicate_threshold: float | None
    progress: bool


@click.command("eval")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="qrels split to evaluate.")
@click.option("--modes", default="bm25,dense,hybrid", show_default=True, help="Comma-separated.")
@click.option("--alias", default=None, help="Alias to index into [default: beir-<dataset name>].")
@click.option("--depth", default=100, show_default=True, help="Hits retrieved per query.")
@hybrid_options
@click.option(
    "--window", default=100, show_default=True, help="Candidates the cross-encoder reranks."
)
@click.option(
    "--rerank-base",
    type=click.Choice(["bm25", "dense", "hybrid"]),
    default="hybrid",
    show_default=True,
    help="First stage whose candidates `rerank` reorders.",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="Cross-encoder folder for `rerank` [default: RERANKER_MODEL or the shipped model].",
)
@click.option(
    "--variant",
    type=click.Choice(MODEL_VARIANTS),
    default=None,
    help="Exported precision of the cross-encoder [default: fp32 if present].",
)
@click.option(
    "--max-length",
    type=int,
    default=None,
    help="Tokens the cross-encoder reads per (query, passage) pair in `rerank`/`blend`, "
    "truncated longest-first; 8 to the model's position limit [default: the model card's "
    "max_length].",
)
@scorer_url_option
@click.option(
    "--cascade-model",
    type=click.Path(path_type=Path),
    default=None,
    help="For `rerank`: a small student (`reranker distill`, exported) scores the whole "
    "window and the cross-encoder only its top --cascade-k. The name `first-stage` makes "
    "the first stage's own order the cheap level (no second model); `none` scores the whole "
    "window [default: first-stage, chosen on dev queries, where a cascade applies: not with "
    "blend or --record].",
)
@click.option(
    "--cascade-k",
    type=int,
    default=None,
    help="With --cascade-model: hits of the student's top the cross-encoder rescores "
    "(1..WINDOW) [default: 20].",
)
@click.option("--reindex", is_flag=True, help="Index the corpus again even if it is current.")
@click.option("--output", type=click.Path(path_type=Path), help="Write the results as JSON.")
@click.option(
    "--blend",
    default=None,
    help="For `blend`: a blend file from `reranker ltr fit`, or weights such as "
    "relevance=1,authority=0.1.",
)
@click.option(
    "--signals",
    default=None,
    help="Signal config: a preset (stackexchange, scifact, none) or a JSON file "
    "[default: the blend file's, else the dataset's preset].",
)
@click.option(
    "--max-queries",
    type=int,
    default=None,
    help="Only the first N judged queries (in qrels order), for quick comparisons.",
)
@click.option(
    "--record",
    is_flag=True,
    help="Also write the rerank results into the cross-encoder's model card (metrics).",
)
@click.option(
    "--score-cache/--no-score-cache",
    default=True,
    show_default=True,
    help="Keep the cross-encoder's logits in RERANKER_HOME/scores, so a re-run scores nothing; "
    "--no-score-cache scores every pair again (e.g. to time or check a scorer).",
)
@passages_option
@diversity_options
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def eval_cmd(ctx: click.Context, /, **options: Any) -> None:
    """Evaluate retrieval on a BEIR-layout DATASET: NDCG@10, MRR@10 and Recall@100 per mode.

    Indexes the corpus first if the alias does not already hold it (signals.jsonl beside the
    corpus is joined in), then runs every judged query of the split through every mode.
    """
    run_eval(ctx, EvalArgs(**options))


def run_eval(ctx: click.Context, a: EvalArgs) -> None:
    """``reranker eval``: check the options, index the dataset if needed, run every mode."""
    from reranker.evaluation.runs import (
        EvalReport,
        collect_run,
        ensure_dataset_index,
        first_stage_runners,
        judged_queries,
        query_vectors,
    )
    from reranker.metrics import score_run
    from reranker.rerank.pipeline import QueryPath
    from reranker.retrieval.first_stage import FirstStage

    wanted = _eval_modes(a.modes, a.depth)
    cascade_model, cascade_k = _checked_options(a, wanted)
    hybrid = parse_hybrid(a.fusion, a.rank_constant, a.normalization, a.weights)
    dataset = a.dataset.resolve() if a.dataset.exists() else a.dataset
    queries, qrels = judged_queries(dataset, a.split, limit=a.max_queries)
    alias = a.alias or f"beir-{dataset.name.lower()}"

    client, embedder, cache = indexing_tools(ctx, alias=alias)
    built = ensure_dataset_index(
        client,
        dataset,
        alias,
        embedder,
        cache=cache,
        force=a.reindex,
        progress=a.progress,
        rescorer=rescore_encoder(ctx),
    )
    if built is not None:
        click.echo(f"indexed {built.documents} documents into {built.index}", err=True)

    stage = FirstStage(client, alias, embedder)
    vectors = query_vectors(stage, queries)
    runners = first_stage_runners(stage, queries, depth=a.depth, hybrid=hybrid, vectors=vectors)
    reranking = None
    redundancy: dict[str, list[float]] = {}  # ILS@10 per query, with --diversity
    if {"rerank", "blend"} & set(wanted):
        meta = alias_meta(client, alias)  # read once: passages, the second embedder
        path = QueryPath(
            index=alias,
            base=a.rerank_base,
            window=a.window,
            hybrid=hybrid,
            model=a.model,
            variant=a.variant,
            max_length=a.max_length,
            score_cache=ctx.obj.home / "scores" if a.score_cache else None,
            scorer_urls=a.scorer_urls,
            scorer_api_key=ctx.obj.scorer_api_key,
            cascade_model=cascade_model,
            cascade_k=cascade_k,
            passages=passages_for(meta, a.passages),  # type: ignore[arg-type]
            diversity=parse_diversity(a.diversity, a.duplicate_threshold, a.diversity_method),
        )
        reranking = _reranking(a, path, wanted, dataset.name)
        rescore = alias_rescore(ctx, alias, meta)
        runners.update(
            _rerank_runners(wanted, path, client, embedder, reranking, vectors, redundancy, rescore)
        )
    report = EvalReport(dataset=dataset.name, split=a.split, queries=len(queries), index=alias)
    for mode in wanted:
        run, ms = collect_run(queries, runners[mode], progress=a.progress, label=mode)
        report.results[mode] = score_run(run, qrels)
        report.timings_ms[mode] = ms
        if redundancy.get(mode):
            report.results[mode]["ils@10"] = sum(redundancy[mode]) / len(redundancy[mode])
    click.echo(report.table())
    _report(a, report, dataset.name, reranking)


def _checked_options(a: EvalArgs, wanted: list[str]) -> tuple[Path | None, int | None]:
    """The options checked against each other before anything is loaded or searched; the
    cascade to run, as (model, k)."""
    _check_max_length(a.max_length, wanted, a.model, a.scorer_urls)
    if a.scorer_urls and a.record:
        from reranker.errors import ConfigError

        raise ConfigError(
            "--record writes into a local model's card: use --model, not --scorer-url"
        )
    cascade_model, cascade_k = _default_cascade(
        a.cascade_model, a.cascade_k, wanted, a.record, a.window
    )
    _check_cascade_options(cascade_model, cascade_k, a.window, wanted, a.record)
    return cascade_model, cascade_k


def _reranking(
    a: EvalArgs, path: QueryPath, wanted: list[str], dataset: str
) -> tuple[Any, tuple[SignalConfig | None, Blend | None], Cascade | None]:
    """The scorer (a CachedScorer unless --no-score-cache), the blend and the cascade that
    rerank, each said on stderr."""
    from reranker.rerank.pipeline import cascade_for, scorer_for

    scorer = scorer_for(path)
    cascade = cascade_for(path, scorer)
    length = max_length_of(scorer)
    at = f", max length {length}" if length else ""
    click.echo(f"reranking {a.rerank_base} top-{a.window} with {scorer!r}{at}", err=True)
    if cascade is not None:
        cheap = cascade.scorer if cascade.scorer is not None else "the first stage"
        click.echo(
            f"cascade: {cheap!r} ranks the window, the cross-encoder rescores its top {cascade.k}",
            err=True,
        )
    model_dir = scorer.model_dir if isinstance(scorer, FromFolder) else None  # not remote
    blend_choice = _eval_blend(wanted, a.blend, a.signals, dataset, model_dir)
    return scorer, blend_choice, cascade


def _report(
    a: EvalArgs, report: EvalReport, dataset: str, reranking: tuple[Any, Any, Any] | None
) -> None:
    """The JSON report (``--output``), and the reranked figures in the model's card
    (``--record``)."""
    scorer, _, cascade = reranking if reranking is not None else (None, None, None)
    if a.output:
        payload = report.as_json()
        if scorer is not None:
            payload["cross_encoder"] = _scorer_summary(scorer, a.rerank_base, a.window)
        if cascade is not None:
            payload["cascade"] = {"model": cascade.student_id, "k": cascade.k}
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {a.output}", err=True)
    if a.record and scorer is not None and "rerank" in report.results:
        from reranker.rerank.scorer import length_tag

        key = f"{dataset}/{a.split}/{a.rerank_base}-top{a.window}/{scorer.variant}"
        tag = length_tag(scorer)  # results at another length than the card's old 256
        _record_in_card(scorer, f"{key}/{tag}" if tag else key, report.results["rerank"])


EVAL_MODES = ("bm25", "dense", "hybrid", "rerank", "blend")


def _check_max_length(
    max_length: int | None,
    wanted: list[str],
    model: Path | None,
    scorer_urls: tuple[str, ...],
) -> None:
    """``eval --max-length``: for a local model's `rerank`/`blend`, from
    :data:`~reranker.rerank.scorer.MIN_MAX_LENGTH` to the model's position limit."""
    from reranker.errors import ConfigError
    from reranker.models import config_max_positions
    from reranker.rerank.scorer import MIN_MAX_LENGTH

    if max_length is None:
        return
    if not {"rerank", "blend"} & set(wanted):
        raise ConfigError(
            "--max-length applies to the cross-encoder: add rerank or blend to --modes"
        )
    if scorer_urls:
        raise ConfigError(
            "--max-length applies to a local model; a --scorer-url truncates at its own length"
        )
    folder = model or default_model_dir()
    positions = config_max_positions(folder)
    if not MIN_MAX_LENGTH <= max_length <= positions:
        raise ConfigError(
            f"--max-length must be from {MIN_MAX_LENGTH} to {positions} (the position limit "
            f"of {folder}), got {max_length}"
        )


def _scorer_summary(scorer: Any, rerank_base: str, window: int) -> dict[str, Any]:
    """What reranked, for the eval JSON: model, version, variant, max length, first stage."""
    return {
        "model": scorer.model_id,
        "version": scorer.version,
        "variant": scorer.variant,
        "max_length": max_length_of(scorer),
        "rerank_base": rerank_base,
        "window": window,
    }


def _eval_modes(modes: str, depth: int) -> list[str]:
    """The modes ``--modes`` names, checked (and ``--depth``, which NDCG@10 needs ≥ 10)."""
    from reranker.errors import ConfigError

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in EVAL_MODES]
    if unknown or not wanted:
        raise ConfigError(
            f"unknown mode(s) {', '.join(unknown) or '(none)'}; use {', '.join(EVAL_MODES)}"
        )
    if depth < 10:
        raise ConfigError("--depth must be at least 10 (NDCG@10 needs ten hits)")
    return wanted


def _default_cascade(
    model: Path | None, k: int | None, wanted: list[str], record: bool, window: int
) -> tuple[Path | None, int | None]:
    """The cascade `eval` runs, as (model, k): the one named; `none` for none; else the
    default chosen on dev queries (the first stage as the cheap level, k = 20 or the window
    if smaller) wherever a cascade can apply (the rerank mode, without blend or --record)."""
    from reranker.errors import ConfigError
    from reranker.rerank.cascade import DEFAULT_CASCADE_K, FIRST_STAGE_STUDENT, NO_CASCADE

    if model is not None and str(model) == NO_CASCADE:
        if k is not None:
            raise ConfigError("--cascade-k needs a cascade: drop --cascade-model none")
        return None, None
    if model is not None:
        return model, k
    if k is not None:
        return Path(FIRST_STAGE_STUDENT), k
    if "rerank" in wanted and "blend" not in wanted and not record:
        return Path(FIRST_STAGE_STUDENT), min(DEFAULT_CASCADE_K, max(window, 1))
    return None, None


def _check_cascade_options(
    model: Path | None, k: int | None, window: int, wanted: list[str], record: bool
) -> None:
    """``--cascade-model``/``--cascade-k`` checked before anything is loaded or searched."""
    from reranker.errors import ConfigError
    from reranker.rerank.cascade import is_first_stage_student

    if model is None:
        if k is not None:
            raise ConfigError("--cascade-k needs --cascade-model (a folder, or first-stage)")
        return
    if "rerank" not in wanted:
        raise ConfigError("--cascade-model applies to the rerank mode: add rerank to --modes")
    if "blend" in wanted:
        raise ConfigError("a cascade cannot be combined with a blend yet: drop blend from --modes")
    if record:
        raise ConfigError("--record writes one model's card; it cannot record a cascade")
    if k is not None and not 1 <= k <= window:
        raise ConfigError(f"--cascade-k must be between 1 and --window ({window}), got {k}")
    if not is_first_stage_student(model) and not Path(model).is_dir():
        raise ConfigError(f"--cascade-model {model}: no such model folder (or first-stage)")


def _eval_blend(
    wanted: list[str],
    blend: str | None,
    signals: str | None,
    dataset_name: str,
    model_dir: Path | None,
) -> tuple[SignalConfig | None, Blend | None]:
    """The signals and the blend the ``blend`` mode orders by (none without that mode)."""
    if "blend" not in wanted:
        return None, None
    signal_config, blend_model = _blend_and_signals(blend, signals, dataset_name, model_dir)
    click.echo(f"blend {blend_model.kind} over {', '.join(blend_model.feature_names)}")
    return signal_config, blend_model


def _rerank_runners(
    wanted: list[str],
    path: QueryPath,
    client: Elasticsearch,
    embedder: TextEncoder,
    reranking: tuple[PairScorer, tuple[SignalConfig | None, Blend | None], Cascade | None],
    vectors: dict[str, list[float]],
    redundancy: dict[str, list[float]] | None = None,
    rescore: Rescore | None = None,
) -> dict[str, RunFunction]:
    """The ``rerank`` and ``blend`` modes' runners (those wanted), one pipeline each from the
    one builder, sharing ``reranking``'s scorer, blend choice and cascade, and ``rescore``
    (the second embedder); with diversity, each query's ILS@10 into ``redundancy[mode]``."""
    from reranker.evaluation.runs import pipeline_runner
    from reranker.rerank.pipeline import build_pipeline

    scorer, (signal_config, blend_model), cascade = reranking
    runners: dict[str, RunFunction] = {}
    for mode, mode_blend in (("rerank", None), ("blend", blend_model)):
        if mode in wanted:
            pipeline = build_pipeline(
                path,
                client,
                embedder,
                scorer=scorer,
                blend=mode_blend,
                signals=signal_config,
                cascade=cascade,
                rescore=rescore,
            )
            sink = None
            if redundancy is not None and path.diversity is not None:
                sink = redundancy.setdefault(mode, [])
            runners[mode] = pipeline_runner(pipeline, vectors, redundancy=sink)
    return runners


def _record_in_card(scorer: Any, key: str, metrics: dict[str, float]) -> None:
    """``eval --record``: the rerank results into the cross-encoder's card, under ``key``."""
    from export.card import record_metrics
    from reranker.models import CROSS_ENCODER_CARD

    record_metrics(scorer.model_dir, CROSS_ENCODER_CARD, {key: metrics})
    click.echo(f"recorded {key} in {scorer.model_dir / CROSS_ENCODER_CARD}", err=True)


def _blend_and_signals(
    blend: str | None, signals: str | None, dataset_name: str, model_dir: Path | None = None
) -> tuple[Any, Any]:
    """The signal config and the blend for `blend` mode (see eval's --blend/--signals);
    ``--blend model`` is the cross-encoder's default blend, from its card."""
    from reranker.blend.blends import LinearBlend, load_blend, parse_weights, read_blend_card
    from reranker.blend.features import feature_names_for
    from reranker.blend.signals import PRESETS, load_signal_config
    from reranker.errors import ConfigError

    if not blend:
        raise ConfigError("mode blend needs --blend (a blend file, weights, or `model`)")
    blend_path = Path(blend)
    card = read_blend_card(blend_path) if blend_path.exists() else {}
    if signals:
        config = load_signal_config(signals)
    elif card.get("signals") is not None:
        config = load_signal_config(card["signals"])
    else:
        config = PRESETS.get(dataset_name.lower(), PRESETS["none"])
    names = feature_names_for(config)
    if blend == "model" and not blend_path.exists():
        default = _default_blend(model_dir)
        return config, LinearBlend(
            weights=default["weights"], bias=default.get("bias", 0.0), feature_names=names
        )
    model = load_blend(blend_path, names) if blend_path.exists() else parse_weights(blend, names)
    return config, model


def _default_blend(model_dir: Path | None) -> dict[str, Any]:
    from reranker.errors import ConfigError
    from reranker.models import CROSS_ENCODER_CARD, read_card

    if model_dir is None:
        raise ConfigError("--blend model needs a cross-encoder")
    default = read_card(model_dir, CROSS_ENCODER_CARD).get("default_blend")
    if not isinstance(default, dict) or not isinstance(default.get("weights"), dict):
        raise ConfigError(
            f"the model card in {model_dir} has no default blend "
            "(write one with `reranker ltr fit --card`)"
        )
    return default
