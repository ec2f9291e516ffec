"""The ``reranker`` command line: one command per verb.

Exit codes: 0 success; 1 unexpected failure; 2 bad usage or settings; 3 the Elasticsearch
node could not be started or reached; 4 unreadable or malformed input; 5 indexing failed
(the live alias was left as it was); 6 a search failed; 7 a model could not be loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
from elasticsearch import ConnectionError as ESConnectionError

from reranker.config import MODEL_VARIANTS, Settings
from reranker.errors import RerankerError

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from reranker.blend.blends import Blend, LinearBlend
    from reranker.blend.signals import SignalConfig
    from reranker.evaluation import RunFunction
    from reranker.rerank.pipeline import Cascade, QueryPath
    from reranker.rerank.scorer import PairScorer
    from reranker.retrieval.embedder import Embedder

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  unexpected failure
  2  bad usage or settings
  3  Elasticsearch node not started or not reachable
  4  unreadable or malformed input
  5  indexing failed (the live alias is untouched)
  6  search failed
  7  model could not be loaded
"""


#: packages of the ``train`` extra: commands that train, export or time torch need them
TRAIN_EXTRA = frozenset({"torch", "transformers", "onnx", "safetensors"})


class RerankerGroup(click.Group):
    """Turns the package's errors into one line on stderr and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] not in TRAIN_EXTRA:
                raise
            command = ctx.invoked_subcommand or "this command"
            click.echo(
                f"error: `reranker {command}` needs the train extra ({exc.name} is not "
                "installed); install it with ./scripts/setup --train "
                "(or: pip install -e '.[train]')",
                err=True,
            )
            sys.exit(2)
        except (RerankerError, ESConnectionError) as exc:
            unreachable = _unreachable_cause(exc)
            if unreachable is not None:
                # whichever step met it (a search, indexing, evaluation), an unreachable
                # cluster is exit 3, as documented
                settings: Settings | None = ctx.obj
                url = settings.es_url if settings else "Elasticsearch"
                click.echo(
                    f"error: cannot reach {url} ({unreachable}); "
                    "start the local node with `reranker es up` or set RERANKER_ES_URL",
                    err=True,
                )
                sys.exit(3)
            assert isinstance(exc, RerankerError)
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


def _unreachable_cause(exc: BaseException) -> str | None:
    """The message of the connection failure (refused, timed out, name not resolved) that
    ``exc`` is or was raised from, if any."""
    from elastic_transport import ConnectionTimeout

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ESConnectionError | ConnectionTimeout):
            return str(getattr(current, "message", current))
        current = current.__cause__ or current.__context__
    return None


@click.group(cls=RerankerGroup, epilog=EXIT_CODES_HELP)
@click.option(
    "--es-url",
    envvar="RERANKER_ES_URL",
    default=None,
    help="Elasticsearch URL [env RERANKER_ES_URL; default http://127.0.0.1:9200].",
)
@click.option(
    "--embedder",
    envvar="RERANKER_EMBEDDER",
    type=click.Path(path_type=Path),
    default=None,
    help="Embedder folder for indexing and queries (`reranker train-embedder`'s embedder/), or "
    "all-MiniLM-L6-v2 for the stock model [env RERANKER_EMBEDDER; default: the shipped "
    "all-MiniLM-L6-v2-scifact-se, fine-tuned, chosen on dev queries].",
)
@click.version_option(package_name="reranker")
@click.pass_context
def main(ctx: click.Context, es_url: str | None, embedder: Path | None) -> None:
    """Hybrid search reranking in front of Elasticsearch.

    Elasticsearch recalls candidates (BM25 and kNN); an ONNX cross-encoder reranks them.
    Start with `reranker es up`, then `reranker index` a corpus and `reranker eval` it.
    """
    ctx.obj = Settings.from_env(es_url=es_url, embedder=embedder)


def _client(ctx: click.Context) -> Elasticsearch:
    from reranker.es.client import make_client

    settings: Settings = ctx.obj
    return make_client(settings)


def _embedder(ctx: click.Context) -> Embedder:
    from reranker.retrieval.embedder import Embedder

    return Embedder.default(ctx.obj)


def default_model_dir() -> Path:
    """The cross-encoder used when none is named: ``RERANKER_MODEL``, else the shipped one."""
    from reranker.rerank.scorer import default_model_dir as scoring_default

    return scoring_default()


def _scorer_url_option(command: Any) -> Any:
    return click.option(
        "--scorer-url",
        "scorer_urls",
        multiple=True,
        help="Score through this rerank endpoint (`reranker serve --scorer-only` or a "
        "text-embeddings-inference server) instead of loading a model; repeatable: requests "
        "are spread across them, with fail-over [serve: env RERANKER_PROXY_SCORER_URLS, "
        "comma-separated].",
    )(command)


def _scorer(model: Path | None, variant: str | None) -> Any:
    from reranker.rerank.scorer import load_scorer

    return load_scorer(model, variant)


# --------------------------------------------------------------------------- es


@main.group(cls=RerankerGroup)
def es() -> None:
    """Manage the local single-node Elasticsearch (the embedded default).

    The node runs on 127.0.0.1 with Elasticsearch's security on: the `elastic` user's
    generated password is kept (mode 0600) in RERANKER_HOME/credentials/, where every
    reranker command and the proxy find it. It runs the integ-test-zip distribution fetched
    from Maven Central with `mvn`; distribution, JDK and data are cached under RERANKER_HOME
    (default ~/.cache/reranker).
    """


def _node_options(func: F) -> F:
    func = click.option("--port", default=9200, show_default=True, help="HTTP port.")(func)
    func = click.option(
        "--es-version", "version", default=None, help="Elasticsearch 9.x version to run."
    )(func)
    return func


def _node(port: int, version: str | None, heap: str | None = None, *, security: bool = True) -> Any:
    from reranker.es.node import DEFAULT_ES_VERSION, LocalNode

    kwargs: dict[str, Any] = {
        "port": port,
        "version": version or DEFAULT_ES_VERSION,
        "security": security,
    }
    if heap:
        kwargs["heap"] = heap
    return LocalNode(**kwargs)


@es.command("up")
@_node_options
@click.option("--heap", default="1g", show_default=True, help="JVM heap (-Xms and -Xmx).")
@click.option(
    "--no-security",
    is_flag=True,
    help="Opt out: start the node with security off (anyone on this machine can read and "
    "change every index; the proxy's allow-list is then the only guard).",
)
def es_up(port: int, version: str | None, heap: str, no_security: bool) -> None:
    """Fetch (once), start and wait for the local node. Does nothing if it already runs.

    Security is on: the `elastic` user's password is generated on the first start and kept
    in RERANKER_HOME/credentials/elasticsearch-<port>.json (mode 0600)."""
    if no_security:
        click.echo(
            "warning: starting Elasticsearch with security OFF (--no-security): no "
            "authentication, no authorization; every local process can read and change "
            "every index",
            err=True,
        )
    node = _node(port, version, heap, security=not no_security)
    status = node.up(progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"Elasticsearch {status.version} is up at {status.url} (pid {status.pid})")
    click.echo(f"node folder (config, data, logs): {status.home}")
    if not no_security:
        from reranker.credentials import credentials_file

        click.echo(f"security on: user elastic, password in {credentials_file(port)}")
    click.echo(
        f"use it: export RERANKER_ES_URL={status.url}   stop it: reranker es down --port {port}"
    )


@es.command("down")
@_node_options
def es_down(port: int, version: str | None) -> None:
    """Stop the local node started by `es up` (only that one, found by its pid file)."""
    status = _node(port, version).down()
    click.echo(status.message)


@es.command("status")
@_node_options
def es_status(port: int, version: str | None) -> None:
    """Say whether the local node runs; exit 3 if it does not."""
    status = _node(port, version).status()
    click.echo(status.message)
    click.echo(f"node folder (config, data, logs): {status.home}")
    if not status.running:
        sys.exit(3)


# --------------------------------------------------------------------------- index


@main.command("index")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--alias", required=True, help="Alias the new index is published under.")
@click.option(
    "--extra",
    "extra",
    multiple=True,
    type=click.Path(path_type=Path),
    help="JSONL of extra fields joined on _id (e.g. signals.jsonl); repeatable.",
)
@click.option(
    "--skip-malformed/--abort-on-malformed",
    default=False,
    show_default=True,
    help="Skip malformed lines (each reported) or stop at the first one.",
)
@click.option("--keep-old", is_flag=True, help="Keep the previous index after the alias swap.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def index_cmd(
    ctx: click.Context,
    source: Path,
    alias: str,
    extra: tuple[Path, ...],
    skip_malformed: bool,
    keep_old: bool,
    progress: bool,
) -> None:
    """Index SOURCE (a BEIR folder or a JSONL file) into a new versioned index behind ALIAS.

    Documents are embedded (ONNX all-MiniLM-L6-v2), bulk-loaded into <alias>-<timestamp>,
    counted, and only then is the alias swapped atomically. Any failure leaves the alias
    and its current index untouched. Re-running on the same source gives the same result.
    """
    from reranker.corpus import CorpusSource
    from reranker.es.indexing import LoadOptions, default_cache, index_corpus

    corpus = CorpusSource.open(source, extra=extra)
    client = _client(ctx)
    embedder = _embedder(ctx)
    result = index_corpus(
        client,
        corpus,
        alias,
        embedder,
        cache=default_cache(ctx.obj.home, embedder),
        skip_malformed=skip_malformed,
        options=LoadOptions(keep_previous=keep_old, progress=progress),
    )
    for skipped in result.skipped:
        click.echo(f"skipped {skipped}", err=True)
    _report_index(result)


@main.command("reindex")
@click.option("--alias", required=True, help="Alias whose index is rebuilt.")
@click.option("--re-embed", is_flag=True, help="Recompute embeddings instead of copying them.")
@click.option("--keep-old", is_flag=True, help="Keep the previous index after the alias swap.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def reindex_cmd(
    ctx: click.Context, alias: str, re_embed: bool, keep_old: bool, progress: bool
) -> None:
    """Rebuild the index behind ALIAS from its own documents (scan + bulk), with the current
    mappings, and swap the alias the same safe way as `index`."""
    from reranker.es.indexing import LoadOptions, default_cache, reindex_alias

    client = _client(ctx)
    embedder = _embedder(ctx)
    result = reindex_alias(
        client,
        alias,
        embedder,
        cache=default_cache(ctx.obj.home, embedder),
        re_embed=re_embed,
        options=LoadOptions(keep_previous=keep_old, progress=progress),
    )
    _report_index(result)


def _report_index(result: Any) -> None:
    previous = ", ".join(result.previous) or "none"
    fate = "deleted" if result.deleted_previous else "kept"
    click.echo(
        f"{result.alias} → {result.index}: {result.documents} documents in "
        f"{result.seconds:.1f}s (previous: {previous}, {fate if result.previous else 'n/a'})"
    )


# --------------------------------------------------------------------------- search


def _hybrid_options(func: F) -> F:
    func = click.option(
        "--fusion",
        type=click.Choice(["rrf", "linear"]),
        default="linear",
        show_default=True,
        help="How BM25 and kNN lists are fused. Linear (min-max, 1:1) beat RRF on SciFact, "
        "Stack Exchange and TREC DL, and lost to it on DBpedia "
        "(docs/experiments/first-stage.md).",
    )(func)
    func = click.option("--rank-constant", default=60, show_default=True, help="RRF constant.")(
        func
    )
    func = click.option(
        "--normalization",
        type=click.Choice(["minmax", "zscore", "l2"]),
        default="minmax",
        show_default=True,
        help="Score normalisation for linear fusion.",
    )(func)
    func = click.option(
        "--weights",
        default=None,
        help="Fusion weights, lexical,dense [default: 0.7,1 for linear fusion (chosen on dev "
        "queries), 1,1 for RRF].",
    )(func)
    return func


def _parse_hybrid(fusion: str, rank_constant: int, normalization: str, weights: str | None) -> Any:
    from reranker.errors import ConfigError
    from reranker.retrieval.first_stage import HybridOptions

    if weights is None:
        return HybridOptions(
            fusion=fusion,  # type: ignore[arg-type]
            rank_constant=rank_constant,
            normalization=normalization,  # type: ignore[arg-type]
        )
    try:
        lexical, dense = (float(w) for w in weights.split(","))
    except ValueError:
        raise ConfigError(f"--weights {weights!r}: expected two numbers, e.g. 1,1") from None
    return HybridOptions(
        fusion=fusion,  # type: ignore[arg-type]
        rank_constant=rank_constant,
        normalization=normalization,  # type: ignore[arg-type]
        weights=(lexical, dense),
    )


def _check_index_embedder(client: Any, alias: str, model_id: str) -> None:
    """Refuse kNN with query vectors of another embedding space than the index's (the
    embedder ``reranker index`` recorded in its ``_meta``; an index without one passes)."""
    from reranker.errors import ConfigError
    from reranker.es.mappings import index_meta

    try:
        recorded = index_meta(client, alias).get("embedder")
    except Exception:  # not readable here: the search itself reports what is wrong
        return
    if recorded and recorded != model_id:
        raise ConfigError(
            f"{alias} was embedded with {recorded}, and this command embeds queries with "
            f"{model_id}: pass the index's embedder (--embedder), reindex, or use --mode bm25"
        )


@main.command("search")
@click.argument("text")
@click.option("--alias", required=True, help="Index or alias to search.")
@click.option(
    "--mode", type=click.Choice(["bm25", "dense", "hybrid"]), default="hybrid", show_default=True
)
@click.option("--k", default=10, show_default=True, help="Number of hits.")
@_hybrid_options
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON lines.")
@click.option(
    "--rerank/--no-rerank",
    default=False,
    show_default=True,
    help="Rerank the first stage's top --window with the cross-encoder.",
)
@click.option("--window", default=100, show_default=True, help="Candidates to rerank.")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Cross-encoder.")
@click.option("--variant", type=click.Choice(MODEL_VARIANTS), default=None, help="Precision.")
@click.option(
    "--cascade-k",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="With --rerank: the cross-encoder rescores the first stage's top K of the window, "
    "the rest keep their first-stage order (chosen on dev queries); 0 scores the whole window.",
)
@click.pass_context
def search_cmd(
    ctx: click.Context,
    text: str,
    alias: str,
    mode: str,
    k: int,
    fusion: str,
    rank_constant: int,
    normalization: str,
    weights: str,
    as_json: bool,
    rerank: bool,
    window: int,
    model: Path | None,
    variant: str | None,
    cascade_k: int,
) -> None:
    """Search ALIAS: BM25 over title and text, kNN over the embedding, or both fused; with
    --rerank, the top --window of that first stage reordered by the cross-encoder."""
    from reranker.rerank.pipeline import FIRST_STAGE_STUDENT, QueryPath, build_pipeline

    cascade = rerank and 0 < cascade_k < window
    path = QueryPath(
        index=alias,
        base=mode,
        window=window if rerank else k,
        hybrid=_parse_hybrid(fusion, rank_constant, normalization, weights),
        rerank=rerank,
        model=model,
        variant=variant,
        cascade_model=Path(FIRST_STAGE_STUDENT) if cascade else None,
        cascade_k=cascade_k if cascade else None,
    )
    # the embedder: kNN, and the dense score a first-stage-aware model reads (BM25 mode too)
    encoder = _embedder(ctx) if mode != "bm25" or rerank else None
    client = _client(ctx)
    if encoder is not None and mode != "bm25":
        _check_index_embedder(client, alias, encoder.model_id)
    pipeline = build_pipeline(path, client, encoder)
    result = pipeline.search(text, k=k)
    if result.degraded:
        click.echo(f"warning: {result.degraded}", err=True)
    for rank, hit in enumerate(result.hits, start=1):
        source = hit.source or {}
        if as_json:
            row = {
                "rank": rank,
                "_id": hit.id,
                "_score": hit.score,
                "first_stage_rank": hit.first_stage_rank,
                "stages": hit.stage_scores,
                "title": source.get("title"),
            }
            if hit.relevance is not None:
                row["relevance"] = hit.relevance
            click.echo(json.dumps(row))
        else:
            label = (source.get("title") or source.get("text") or "").replace("\n", " ")[:90]
            moved = f"(was {hit.first_stage_rank:>3})" if rerank else ""
            click.echo(f"{rank:>3}. {hit.score:10.4f} {moved} {hit.id:<24} {label}")


# --------------------------------------------------------------------------- eval


@main.command("eval")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="qrels split to evaluate.")
@click.option("--modes", default="bm25,dense,hybrid", show_default=True, help="Comma-separated.")
@click.option("--alias", default=None, help="Alias to index into [default: beir-<dataset name>].")
@click.option("--depth", default=100, show_default=True, help="Hits retrieved per query.")
@_hybrid_options
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
@_scorer_url_option
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
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def eval_cmd(
    ctx: click.Context,
    dataset: Path,
    split: str,
    modes: str,
    alias: str | None,
    depth: int,
    fusion: str,
    rank_constant: int,
    normalization: str,
    weights: str,
    window: int,
    rerank_base: str,
    model: Path | None,
    variant: str | None,
    max_length: int | None,
    scorer_urls: tuple[str, ...],
    cascade_model: Path | None,
    cascade_k: int | None,
    reindex: bool,
    output: Path | None,
    blend: str | None,
    signals: str | None,
    max_queries: int | None,
    record: bool,
    score_cache: bool,
    progress: bool,
) -> None:
    """Evaluate retrieval on a BEIR-layout DATASET: NDCG@10, MRR@10 and Recall@100 per mode.

    Indexes the corpus first if the alias does not already hold it (signals.jsonl beside the
    corpus is joined in), then runs every judged query of the split through every mode.
    """
    from reranker.es.indexing import default_cache
    from reranker.evaluation import (
        EvalReport,
        collect_run,
        ensure_dataset_index,
        first_stage_runners,
        judged_queries,
        query_vectors,
        score_run,
    )
    from reranker.rerank.pipeline import QueryPath, cascade_for, scorer_for
    from reranker.retrieval.first_stage import FirstStage

    wanted = _eval_modes(modes, depth)
    _check_max_length(max_length, wanted, model, scorer_urls)
    if scorer_urls and record:
        from reranker.errors import ConfigError

        raise ConfigError(
            "--record writes into a local model's card: use --model, not --scorer-url"
        )
    cascade_model, cascade_k = _default_cascade(cascade_model, cascade_k, wanted, record, window)
    _check_cascade_options(cascade_model, cascade_k, window, wanted, record)
    hybrid = _parse_hybrid(fusion, rank_constant, normalization, weights)
    dataset = dataset.resolve() if dataset.exists() else dataset
    queries, qrels = judged_queries(dataset, split, limit=max_queries)
    alias = alias or f"beir-{dataset.name.lower()}"

    client = _client(ctx)
    embedder = _embedder(ctx)
    built = ensure_dataset_index(
        client,
        dataset,
        alias,
        embedder,
        cache=default_cache(ctx.obj.home, embedder),
        force=reindex,
        progress=progress,
    )
    if built is not None:
        click.echo(f"indexed {built.documents} documents into {built.index}", err=True)

    stage = FirstStage(client, alias, embedder)
    vectors = query_vectors(stage, queries)
    runners = first_stage_runners(stage, queries, depth=depth, hybrid=hybrid, vectors=vectors)
    scorer: Any = None
    cascade = None
    if {"rerank", "blend"} & set(wanted):
        path = QueryPath(
            index=alias,
            base=rerank_base,
            window=window,
            hybrid=hybrid,
            model=model,
            variant=variant,
            max_length=max_length,
            score_cache=ctx.obj.home / "scores" if score_cache else None,
            scorer_urls=scorer_urls,
            cascade_model=cascade_model,
            cascade_k=cascade_k,
        )
        scorer = scorer_for(path)  # a CachedScorer unless --no-score-cache
        cascade = cascade_for(path, scorer)
        length = getattr(scorer, "max_length", None)
        at = f", max length {length}" if length else ""
        click.echo(f"reranking {rerank_base} top-{window} with {scorer!r}{at}", err=True)
        if cascade is not None:
            cheap = cascade.scorer if cascade.scorer is not None else "the first stage"
            click.echo(
                f"cascade: {cheap!r} ranks the window, the cross-encoder rescores its top "
                f"{cascade.k}",
                err=True,
            )
        model_dir = getattr(scorer, "model_dir", None)  # none for a remote scorer
        blend_choice = _eval_blend(wanted, blend, signals, dataset.name, model_dir)
        runners.update(
            _rerank_runners(wanted, path, client, embedder, scorer, blend_choice, vectors, cascade)
        )
    report = EvalReport(dataset=dataset.name, split=split, queries=len(queries), index=alias)
    for mode in wanted:
        run, ms = collect_run(queries, runners[mode], progress=progress, label=mode)
        report.results[mode] = score_run(run, qrels)
        report.timings_ms[mode] = ms
    click.echo(report.table())
    if output:
        payload = report.as_json()
        if scorer is not None:
            payload["cross_encoder"] = _scorer_summary(scorer, rerank_base, window)
        if cascade is not None:
            payload["cascade"] = {"model": cascade.student_id, "k": cascade.k}
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    if record and "rerank" in report.results:
        from reranker.rerank.scorer import length_tag

        key = f"{dataset.name}/{split}/{rerank_base}-top{window}/{scorer.variant}"
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
        "max_length": getattr(scorer, "max_length", None),
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
    from reranker.rerank.pipeline import DEFAULT_CASCADE_K, FIRST_STAGE_STUDENT, NO_CASCADE

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
    from reranker.rerank.pipeline import is_first_stage_student

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
    embedder: Embedder,
    scorer: PairScorer,
    blend_choice: tuple[SignalConfig | None, Blend | None],
    vectors: dict[str, list[float]],
    cascade: Cascade | None = None,
) -> dict[str, RunFunction]:
    """The ``rerank`` and ``blend`` modes' runners (those wanted), one pipeline each from the
    one builder, sharing ``scorer``."""
    from reranker.evaluation import pipeline_runner
    from reranker.rerank.pipeline import build_pipeline

    signal_config, blend_model = blend_choice
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
            )
            runners[mode] = pipeline_runner(pipeline, vectors)
    return runners


def _record_in_card(scorer: Any, key: str, metrics: dict[str, float]) -> None:
    """``eval --record``: the rerank results into the cross-encoder's card, under ``key``."""
    from export.card import record_metrics
    from reranker.models import CROSS_ENCODER_CARD

    record_metrics(scorer.model_dir, CROSS_ENCODER_CARD, {key: metrics})
    click.echo(f"recorded {key} in {scorer.model_dir / CROSS_ENCODER_CARD}", err=True)


# --------------------------------------------------------------------------- model path


@main.command("train")
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path))
@click.option(
    "--base-model",
    type=click.Path(path_type=Path),
    default=None,
    help="Local Hugging Face checkpoint folder [default: the shipped all-MiniLM-L6-v2]; "
    "with --first-stage-aware, a first-stage-aware checkpoint continues its training.",
)
@click.option("--max-length", default=256, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=4e-5, show_default=True)
@click.option("--epochs", default=1, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option(
    "--exclude-source",
    multiple=True,
    help="Leave out triples of this source (e.g. scifact-train); repeatable.",
)
@click.option(
    "--dev",
    type=click.Path(path_type=Path),
    default=None,
    help="Dev qrels (BEIR <dataset>/qrels/dev.tsv) for NDCG@10 after each epoch.",
)
@click.option(
    "--loss",
    type=click.Choice(["bce", "listwise"]),
    default="bce",
    show_default=True,
    help="Pointwise BCE, or softmax cross-entropy over one positive and its query's negatives.",
)
@click.option(
    "--group-size",
    default=8,
    show_default=True,
    help="Listwise: pairs per group (1 positive + negatives); BATCH_SIZE // this groups a step.",
)
@click.option(
    "--negatives-per-positive",
    default=3,
    show_default=True,
    help="BEIR sources: BM25 negatives sampled per judged positive.",
)
@click.option(
    "--bm25-depth",
    default=30,
    show_default=True,
    help="BEIR sources: BM25 negatives come from this many top documents (judged ones excluded).",
)
@click.option(
    "--first-stage-aware",
    is_flag=True,
    help="Train the first-stage-aware model (score = first-stage features · w + a zero-"
    "initialised correction) listwise over hybrid candidates; DATA are BEIR folders.",
)
@click.option(
    "--head-lr",
    default=1e-3,
    show_default=True,
    help="First-stage-aware: learning rate of the head and the feature weights.",
)
@click.option(
    "--dev-fraction",
    default=0.2,
    show_default=True,
    help="First-stage-aware: train queries held out for checkpoint selection where a dataset "
    "has no dev split.",
)
@click.option(
    "--eval-every",
    type=int,
    default=None,
    help="First-stage-aware: also evaluate and keep the best checkpoint every N steps.",
)
@click.option(
    "--heads",
    default="relevance",
    show_default=True,
    help="First-stage-aware: the tasks of one shared encoder, comma-separated from relevance, "
    "popularity, authority, freshness, clickthrough. Each signal head regresses the dataset's "
    "signal feature (its preset) from the text; clickthrough learns from --click-events. "
    "Each is exported as a named ONNX output.",
)
@click.option(
    "--loss-weights",
    default=None,
    help="First-stage-aware: NAME=WEIGHT,... per head [default: 1 each].",
)
@click.option(
    "--click-events",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="First-stage-aware, with the clickthrough head: UBI events (JSON lines, as "
    "`reranker judgments --events` reads) whose training-query pairs it learns from.",
)
@click.option(
    "--click-min-examinations",
    type=float,
    default=2.0,
    show_default=True,
    help="Pairs the position-based click model thinks were examined fewer times do not train "
    "the clickthrough head.",
)
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--seed", default=13, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/checkpoint-last.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
def train_cmd(
    data: tuple[Path, ...],
    output_dir: Path,
    base_model: Path | None,
    max_length: int,
    batch_size: int,
    lr: float,
    epochs: int,
    max_steps: int | None,
    exclude_source: tuple[str, ...],
    dev: Path | None,
    loss: str,
    group_size: int,
    negatives_per_positive: int,
    bm25_depth: int,
    first_stage_aware: bool,
    head_lr: float,
    dev_fraction: float,
    eval_every: int | None,
    heads: str,
    loss_weights: str | None,
    click_events: Path | None,
    click_min_examinations: float,
    threads: int | None,
    seed: int,
    resume: bool,
    overwrite: bool,
) -> None:
    """Fine-tune a cross-encoder (BertForSequenceClassification, one label) on DATA with
    pointwise binary cross-entropy or a listwise softmax loss over hard negatives.

    --base-model may be an already fine-tuned cross-encoder (its head is kept), e.g. to continue
    a BCE-trained model with the listwise loss on BM25 negatives of a BEIR train split.

    DATA are triples JSONL files (query, positive, negative) or BEIR qrels of a train split;
    a test split is refused. CPU by default (bf16 autocast where the CPU has it), CUDA when
    present. Checkpoints go to OUTPUT/checkpoint-last (resumable); the final model, with its
    tokenizer and train_info.json, to OUTPUT. Export it with `reranker export`.

    With --first-stage-aware, DATA are BEIR folders whose train qrels are the training
    queries; hybrid candidates (BM25 + dense, linear fusion, top 100) are mined in process,
    the checkpoint with the best held-out NDCG@10 (step 0 = the first stage itself included)
    is kept in OUTPUT.

    With --heads relevance,popularity,authority,freshness the same encoder also learns each
    signal the dataset's preset defines (Stack Exchange: all three; SciFact: authority and
    freshness), by a masked mean squared error beside the relevance loss, weighted by
    --loss-weights. Documents judged for dev or test queries never train a head. The
    clickthrough head learns, per (query, document), the attractiveness the position-based
    click model fits to --click-events (binary cross-entropy), for training queries only.
    `reranker export` writes the heads as named outputs; a blend reads them as
    predicted_<head>.
    """
    import logging

    from reranker.errors import ConfigError
    from reranker.training.heads import parse_heads, parse_loss_weights

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        signal_heads = parse_heads(heads)
        weights = parse_loss_weights(loss_weights, signal_heads)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if (signal_heads or loss_weights or click_events) and not first_stage_aware:
        raise click.UsageError(
            "--heads, --loss-weights and --click-events need --first-stage-aware"
        )
    if first_stage_aware:
        _train_aware(
            data, output_dir, base_model, max_length, lr, head_lr, epochs, max_steps,
            group_size, dev_fraction, eval_every, threads, seed, signal_heads, weights,
            click_events, click_min_examinations,
        )  # fmt: skip
        return
    from reranker.training.cross_encoder import TrainConfig, train

    config = TrainConfig(
        train_files=list(data),
        output_dir=output_dir,
        base_model=base_model,
        max_length=max_length,
        batch_size=batch_size,
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        exclude_sources=list(exclude_source),
        dev=dev,
        loss=cast(Any, loss),
        group_size=group_size,
        negatives_per_positive=negatives_per_positive,
        bm25_depth=bm25_depth,
        threads=threads,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
    )
    result = train(config, progress=True)
    click.echo(
        f"trained {result.steps} steps on {result.pairs} pairs in {result.seconds / 60:.1f} min; "
        f"loss (mean of the last steps) {result.info.get('final_loss', float('nan')):.4f}; "
        f"checkpoint {result.checkpoint}"
    )
    for epoch, metrics in enumerate(result.dev_metrics, start=1):
        click.echo(f"dev after epoch {epoch}: {json.dumps(metrics)}")


def _train_aware(
    data: tuple[Path, ...],
    output_dir: Path,
    base_model: Path | None,
    max_length: int,
    lr: float,
    head_lr: float,
    epochs: int,
    max_steps: int | None,
    group_size: int,
    dev_fraction: float,
    eval_every: int | None,
    threads: int | None,
    seed: int,
    signal_heads: tuple[str, ...] = (),
    loss_weights: dict[str, float] | None = None,
    click_events: Path | None = None,
    click_min_examinations: float = 2.0,
) -> None:
    from reranker.config import Settings
    from reranker.training.first_stage_aware import AwareTrainConfig, train_aware

    config = AwareTrainConfig(
        datasets=list(data),
        output_dir=output_dir,
        base_model=base_model,
        max_length=max_length,
        lr=lr,
        head_lr=head_lr,
        epochs=epochs,
        max_steps=max_steps,
        group_size=group_size,
        dev_fraction=dev_fraction,
        eval_every=eval_every,
        threads=threads,
        seed=seed,
        cache_dir=Settings.from_env().home / "embeddings",
        signal_heads=signal_heads,
        loss_weights=loss_weights,
        click_events=click_events,
        click_min_examinations=click_min_examinations,
    )
    info = train_aware(config, progress=True)
    chosen = info["chosen"]
    click.echo(
        f"trained {info['steps']} steps in {info['seconds'] / 60:.1f} min; kept the checkpoint "
        f"of step {int(chosen['step'])} (held-out NDCG@10 {json.dumps(chosen)}) in {output_dir}"
    )


@main.command("distill")
@click.argument("teacher", type=click.Path(path_type=Path))
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output", "output_dir", required=True, type=click.Path(path_type=Path),
    help="Folder for the student checkpoint (export it with `reranker export`).",
)  # fmt: skip
@click.option("--layers", default=2, show_default=True, help="Transformer layers of the student.")
@click.option(
    "--base-model",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint whose first layers start the student [default: the shipped all-MiniLM-L6-v2].",
)
@click.option(
    "--loss",
    type=click.Choice(["listwise-kl", "margin-mse"]),
    default="listwise-kl",
    show_default=True,
    help="KL between the teacher's and the student's softmax over a query's candidates, or "
    "the MSE of every score difference within a query.",
)
@click.option("--temperature", default=1.0, show_default=True, help="listwise-kl temperature.")
@click.option("--window", default=100, show_default=True, help="First-stage candidates per query.")
@click.option("--top", default=10, show_default=True, help="Candidates kept from the top.")
@click.option(
    "--sampled", default=20, show_default=True, help="Random candidates kept from the rest."
)
@click.option("--queries-per-step", default=2, show_default=True)
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--epochs", default=1, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option(
    "--eval-every",
    default=200,
    show_default=True,
    help="Score the held-out queries every N steps; the best step is kept.",
)
@click.option(
    "--cascade-k", default=10, show_default=True, help="k of the held-out cascade metric."
)
@click.option(
    "--dev-max-queries", default=150, show_default=True, help="Held-out queries per dataset."
)
@click.option(
    "--max-queries", type=int, default=None, help="Train queries per dataset (a seeded sample)."
)
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--seed", default=13, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def distill_cmd(
    ctx: click.Context,
    teacher: Path,
    datasets: tuple[Path, ...],
    output_dir: Path,
    layers: int,
    base_model: Path | None,
    loss: str,
    temperature: float,
    window: int,
    top: int,
    sampled: int,
    queries_per_step: int,
    lr: float,
    epochs: int,
    max_steps: int | None,
    eval_every: int,
    cascade_k: int,
    dev_max_queries: int,
    max_queries: int | None,
    threads: int | None,
    seed: int,
    overwrite: bool,
    progress: bool,
) -> None:
    """Distil a small cross-encoder (a cascade's student) from TEACHER, an exported model
    folder, on the train queries of the BEIR DATASETS.

    Each train query's hybrid top-WINDOW comes from the local Elasticsearch (alias
    beir-<dataset>, indexed first, as `reranker eval` does, when it is missing or holds
    another corpus or another embedder's vectors); the top --top and --sampled random others
    are scored by the teacher (logits cached under RERANKER_HOME/scores, so a re-run costs no
    teacher time). The student is the first --layers layers of --base-model with a fresh
    head, trained on the teacher's logits with --loss, reading the teacher's tokenizer at its
    max_length. Held-out train queries (the dataset's dev qrels, else the seeded 20% hold-out
    of its train qrels) pick the checkpoint: the best NDCG@10 of the cascade at --cascade-k.
    Test queries are never used.

    OUTPUT gets the student checkpoint and train_info.json (teacher id and version, layers,
    data, loss, held-out curve); `reranker export OUTPUT MODEL_DIR --int8` makes it servable,
    and `reranker eval --cascade-model MODEL_DIR --cascade-k K` measures the cascade.
    """
    import logging

    from reranker.es.indexing import default_cache
    from reranker.training.distill import (
        DistillConfig,
        check_output_dir,
        distill,
        load_teacher,
        query_splits,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one line per search
    config = DistillConfig(
        teacher=teacher,
        datasets=list(datasets),
        output_dir=output_dir,
        layers=layers,
        base_model=base_model,
        loss=cast(Any, loss),
        temperature=temperature,
        window=window,
        top=top,
        sampled=sampled,
        queries_per_step=queries_per_step,
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        eval_every=eval_every,
        cascade_k=cascade_k,
        dev_max_queries=dev_max_queries,
        max_queries=max_queries,
        threads=threads,
        seed=seed,
        overwrite=overwrite,
    )
    # everything that needs no Elasticsearch is checked before connecting
    for dataset in config.datasets:
        query_splits(dataset, dev_max_queries=config.dev_max_queries, seed=config.seed)
    load_teacher(config.teacher)
    check_output_dir(config.output_dir, config.overwrite)
    embedder = _embedder(ctx)
    info = distill(
        config,
        _client(ctx),
        embedder,
        score_cache=ctx.obj.home / "scores",
        embedding_cache=default_cache(ctx.obj.home, embedder),
        progress=progress,
    )
    chosen = info["distillation"]["chosen"] or {}
    click.echo(
        f"distilled a {layers}-layer student in {info['seconds'] / 60:.1f} min "
        f"({info['steps']} steps); kept step {chosen.get('step')} "
        f"(held-out {json.dumps(chosen.get('datasets', {}))}) in {output_dir}"
    )


@main.command("train-embedder")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output",
    "output_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for checkpoint/, embedder/ and train_info.json.",
)
@click.option(
    "--base-model",
    type=click.Path(path_type=Path),
    default=None,
    help="Local Hugging Face encoder folder [default: the shipped all-MiniLM-L6-v2].",
)
@click.option("--epochs", default=2, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option("--batch-size", default=32, show_default=True, help="Queries per step.")
@click.option("--lr", default=2e-5, show_default=True)
@click.option("--scale", default=20.0, show_default=True, help="Cosine × scale → logits.")
@click.option(
    "--hard-negative-depth",
    default=30,
    show_default=True,
    help="Hard negatives come from the hybrid window's top ranks (judged ones and their "
    "neighbours excluded).",
)
@click.option("--name", default="all-MiniLM-L6-v2-finetuned", show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--seed", default=7, show_default=True)
def train_embedder_cmd(
    datasets: tuple[Path, ...],
    output_dir: Path,
    base_model: Path | None,
    epochs: int,
    max_steps: int | None,
    batch_size: int,
    lr: float,
    scale: float,
    hard_negative_depth: int,
    name: str,
    threads: int | None,
    seed: int,
) -> None:
    """Fine-tune the first stage's embedder on DATASETS' train qrels (BEIR folders).

    In-batch negatives plus one hard negative per query from its hybrid window; the
    checkpoint kept is the one whose hybrid list ranks held-out queries best (a dataset's dev
    split, else 20 % of its train queries, the ones the first-stage-aware model holds out).
    Writes OUTPUT/checkpoint (torch), OUTPUT/embedder (ONNX: what --embedder and
    RERANKER_EMBEDDER name) and OUTPUT/train_info.json. Index with the new embedder before
    querying with it: `reranker eval` rebuilds an alias whose recorded embedder differs, and
    the proxy refuses kNN across two embedders. Needs the train extra.
    """
    import logging

    from reranker.training.embedder import EMBEDDER_DIR, EmbedderTrainConfig, train_embedder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for dataset in datasets:
        if not (dataset / "corpus.jsonl").is_file():
            raise click.BadParameter(f"{dataset} is not a BEIR folder (no corpus.jsonl)")
    config = EmbedderTrainConfig(
        datasets=list(datasets),
        output=output_dir,
        base_model=base_model,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        scale=scale,
        hard_negative_depth=hard_negative_depth,
        threads=threads,
        seed=seed,
        name=name,
    )
    info = train_embedder(config)
    chosen = info["chosen"]
    click.echo(
        f"kept step {chosen['step']} (held-out hybrid NDCG@10 {chosen['mean']:.4f}; before "
        f"{info['history'][0]['mean']:.4f}); use it with --embedder {output_dir / EMBEDDER_DIR}"
    )


@main.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--int8", is_flag=True, help="Also write a per-channel int8 variant.")
@click.option("--fp16", is_flag=True, help="Also write an fp16 variant (for CUDA).")
@click.option("--name", default=None, help="Model name for the card [default: folder name].")
@click.option("--max-length", default=256, show_default=True)
@click.option(
    "--keep",
    default=None,
    help="Comma-separated variants to keep after the parity checks, e.g. int8 for a small "
    "shipped model [default: all].",
)
def export_cmd(
    checkpoint: Path,
    out: Path,
    int8: bool,
    fp16: bool,
    name: str | None,
    max_length: int,
    keep: str | None,
) -> None:
    """Export CHECKPOINT (any local Hugging Face sequence-classification folder) to ONNX in
    OUT, with dynamic batch and sequence axes, fused attention, a parity check against torch
    (max |logit difference| ≤ 1e-4 for fp32) and a model card reranker.json."""
    from export import export_cross_encoder

    folder = export_cross_encoder(
        checkpoint, out, int8=int8, fp16=fp16, name=name, max_length=max_length
    )
    if keep:
        from export.card import prune_variants
        from reranker.models import CROSS_ENCODER_CARD

        prune_variants(folder, CROSS_ENCODER_CARD, [v.strip() for v in keep.split(",")])
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    click.echo(f"exported {checkpoint} → {folder} ({size_mb:.1f} MB)")


# --------------------------------------------------------------------------- serve


@main.command("serve")
@click.option("--host", default=None, help="[env RERANKER_PROXY_HOST; default 127.0.0.1]")
@click.option("--port", type=int, default=None, help="[env RERANKER_PROXY_PORT; default 9280]")
@click.option(
    "--allow",
    multiple=True,
    help="Index pattern clients may search (fnmatch); repeatable [default: all].",
)
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Cross-encoder.")
@click.option("--variant", type=click.Choice(MODEL_VARIANTS), default=None)
@click.option("--dense/--no-dense", default=True, show_default=True, help="Allow hybrid kNN.")
@click.option("--request-log/--no-request-log", default=None, help="Log reranked requests.")
@click.option(
    "--ubi/--no-ubi",
    default=None,
    help="User Behavior Insights: a query_id per search, query documents in ubi_queries, "
    "POST /_reranker/events into ubi_events [env RERANKER_PROXY_UBI; default off].",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="Process logs on stderr: JSON lines (one object per event) or plain text.",
)
@click.option(
    "--signals",
    "signal_sources",
    multiple=True,
    help="[PATTERN=]PRESET_OR_FILE: the signals a blend of weights may use on indices matching "
    "PATTERN (default *), e.g. 'beir-stackexchange*=stackexchange'; repeatable.",
)
@click.option(
    "--blend",
    "blend_files",
    multiple=True,
    help="NAME=FILE: a learned blend (`reranker ltr fit`) requests may name; repeatable.",
)
@click.option(
    "--model-root",
    "model_roots",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder `POST /_reranker/reload` may load models from; repeatable "
    "[env RERANKER_PROXY_MODEL_ROOTS; default: the served model's parent folder].",
)
@click.option(
    "--scorer-only",
    is_flag=True,
    default=None,
    help="Serve only the rerank API (POST /rerank, /v1/rerank, /v2/rerank, GET /info) with "
    "/_health, /metrics and reload: no Elasticsearch needed [env RERANKER_PROXY_SCORER_ONLY].",
)
@_scorer_url_option
@click.option(
    "--cascade-model",
    type=click.Path(path_type=Path),
    default=None,
    help="A cascade's student (`reranker distill`, exported): searches with "
    '"rerank": {"cascade": K} have it score the window and the cross-encoder only its top K; '
    "`first-stage` makes the first stage's order that cheap level, `none` refuses cascades "
    "[env RERANKER_PROXY_CASCADE_MODEL; default: first-stage].",
)
@click.option(
    "--cascade-k",
    type=click.IntRange(min=0),
    default=None,
    help="The cascade a search gets when its rerank object names none and asks for no blend: "
    'the cross-encoder rescores the cheap level\'s top K ("cascade": false in a search asks for '
    "the whole window; 0 here: no default cascade) [env RERANKER_PROXY_DEFAULT_CASCADE; "
    "default: 20, chosen on dev queries].",
)
@click.pass_context
def serve_cmd(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    allow: tuple[str, ...],
    model: Path | None,
    variant: str | None,
    dense: bool,
    request_log: bool | None,
    ubi: bool | None,
    log_format: str,
    signal_sources: tuple[str, ...],
    blend_files: tuple[str, ...],
    model_roots: tuple[Path, ...],
    scorer_only: bool | None,
    scorer_urls: tuple[str, ...],
    cascade_model: Path | None,
    cascade_k: int | None,
) -> None:
    """Run the search proxy: Elasticsearch's `_search`, reranked when the body carries a
    `rerank` object, passed through unchanged otherwise. Point any Elasticsearch client at
    it. Other settings come from RERANKER_PROXY_* variables (see docs/proxy.md).

    `kill -HUP <pid>` or `POST /_reranker/reload` (optionally {"model": DIR, "variant": V})
    loads the model again, checks its card and a smoke test, and swaps it in without dropping
    requests; a model that fails keeps the old one serving.

    It also answers the standard rerank API, for Elasticsearch's and OpenSearch's inference
    services and for Cohere/TEI clients: POST /rerank (text-embeddings-inference), POST
    /v1/rerank and /v2/rerank (Cohere), GET /info. `--scorer-only` serves just those.
    """
    from reranker.proxy import ProxySettings, serve
    from reranker.proxy.blends import parse_pairs

    overrides: dict[str, Any] = {
        "es": ctx.obj,
        "host": host,
        "port": port,
        "scorer_only": scorer_only,
        "enable_dense": dense,
    }
    if allow:
        overrides["allowed_indices"] = tuple(allow)
    if request_log is not None:
        overrides["request_log"] = request_log
    if ubi is not None:
        overrides["ubi"] = ubi
    if signal_sources:
        overrides["signals"] = parse_pairs(signal_sources, "signals")
    if blend_files:
        overrides["blends"] = parse_pairs(blend_files, "blend")
    if model_roots:
        overrides["model_roots"] = tuple(model_roots)
    if scorer_urls:
        overrides["scorer_urls"] = scorer_urls
    if cascade_model is not None:
        overrides["cascade_model"] = cascade_model
    if cascade_k is not None:
        overrides["default_cascade"] = cascade_k
    settings = ProxySettings.from_env(**overrides)
    settings = _serve_cascade_defaults(settings, cascade_k)
    if not settings.model_roots:
        served = (model or default_model_dir()).resolve()
        settings = dataclasses.replace(settings, model_roots=(served.parent,))
    serve(
        settings,
        # remote scorers: the endpoints load (and reload) the model, not this process
        model_loader=None
        if settings.scorer_urls
        else lambda folder, chosen: _scorer(folder or model, chosen or variant),
        # the embedder: kNN queries, and the dense score a first-stage-aware model reads where
        # no kNN gave one (a BM25-only search, the rerank API)
        encoder_factory=lambda: _embedder(ctx),
        json_logs=log_format == "json",
    )


def _serve_cascade_defaults(settings: Any, cascade_k: int | None) -> Any:
    """The served defaults chosen on dev queries: the first stage as the cascade's cheap
    level and k = 20, unless the command line or the environment said otherwise (`none`
    for no cascade model, k = 0 for no default cascade)."""
    from reranker.rerank.pipeline import DEFAULT_CASCADE_K, FIRST_STAGE_STUDENT, NO_CASCADE

    model = settings.cascade_model
    if model is None:
        model = Path(FIRST_STAGE_STUDENT)
    elif str(model) == NO_CASCADE:
        model = None
    k = settings.default_cascade
    if cascade_k is None and k is None and "RERANKER_PROXY_DEFAULT_CASCADE" not in os.environ:
        k = DEFAULT_CASCADE_K
    if not k or model is None:
        k = None
    return dataclasses.replace(settings, cascade_model=model, default_cascade=k)


# --------------------------------------------------------------------------- ltr


@main.group(cls=RerankerGroup)
def ltr() -> None:
    """Learn the blend of relevance with authority, freshness and popularity.

    `ltr log-features` writes the features of every candidate in the window for the judged
    queries of a split; `ltr fit` learns a linear or LambdaMART blend on the train file,
    selecting on the dev file; `eval --modes ...,blend --blend FILE` reports it.
    """


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
def ltr_log_features(
    ctx: click.Context,
    dataset: Path,
    split: str,
    output: Path,
    alias: str | None,
    window: int,
    rerank_base: str,
    signals: str | None,
    model: Path | None,
    variant: str | None,
    max_queries: int | None,
    progress: bool,
) -> None:
    """Write the blend's features of every window candidate of DATASET's judged queries.

    One JSON object per candidate (qid, doc_id, label, rank, features, defaults); a
    FILE.meta.json beside it records the signal config, window and model, for `ltr fit`.
    A multi-task model (`train --heads`) adds its heads' predictions as the features
    predicted_<head>, so a blend can be fitted for documents whose signals are missing.
    """
    from tqdm import tqdm

    from reranker.blend.features import feature_names_for
    from reranker.blend.signals import PRESETS, load_signal_config
    from reranker.es.indexing import default_cache
    from reranker.evaluation import ensure_dataset_index, judged_queries, query_vectors
    from reranker.rerank.heads import predicted_feature
    from reranker.rerank.pipeline import QueryPath, build_pipeline
    from reranker.rerank.scorer import CachedScorer
    from reranker.training.ltr import log_features

    queries, qrels = judged_queries(dataset, split, limit=max_queries)
    config = (
        load_signal_config(signals)
        if signals
        else PRESETS.get(dataset.name.lower(), PRESETS["none"])
    )
    names = feature_names_for(config)
    alias = alias or f"beir-{dataset.name.lower()}"
    client = _client(ctx)
    embedder = _embedder(ctx)
    ensure_dataset_index(
        client,
        dataset,
        alias,
        embedder,
        cache=default_cache(ctx.obj.home, embedder),
        progress=progress,
    )
    path = QueryPath(
        index=alias,
        base=rerank_base,
        window=window,
        model=model,
        variant=variant,
        score_cache=ctx.obj.home / "scores",
        source_fields=("title", "text", *config.source_fields),
    )
    pipeline = build_pipeline(path, client, embedder)
    scorer = pipeline.scorer
    assert isinstance(scorer, CachedScorer)
    assert pipeline.first_stage is not None
    if pipeline.signal_heads:  # a multi-task model: its heads' predictions are features too
        pipeline.predict_signals = True
        names = (*names, *(predicted_feature(h) for h in pipeline.signal_heads))
    vectors = query_vectors(pipeline.first_stage, queries) if rerank_base != "bm25" else {}
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with output.open("w", encoding="utf-8") as handle:
        ordered = tqdm(queries.items(), desc="features", unit="q", disable=not progress)
        for query_id, text in ordered:
            for row in log_features(pipeline, {query_id: text}, qrels, names, config, vectors):
                handle.write(json.dumps(row) + "\n")
                rows += 1
    meta = {
        "dataset": dataset.name,
        "split": split,
        "queries": len(queries),
        "window": window,
        "rerank_base": rerank_base,
        "signals": config.to_dict(),
        "features": list(names),
        "model": f"{scorer.model_id}@{scorer.version}/{scorer.variant}",
    }
    meta_path = output.with_name(output.name + ".meta.json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    click.echo(f"wrote {rows} rows for {len(queries)} queries to {output}")


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


# --------------------------------------------------------------------------- doctor


@main.command("doctor")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Cross-encoder.")
@click.pass_context
def doctor_cmd(ctx: click.Context, model: Path | None) -> None:
    """Report what this machine offers and what the reranker will use: ONNX Runtime
    providers, the cross-encoder and the provider it runs on, the embedder cache, the JDK
    and the cluster. Exits 1 if something needed is missing."""
    import platform

    import onnxruntime

    problems = 0

    def line(name: str, value: str, ok: bool = True) -> None:
        nonlocal problems
        problems += 0 if ok else 1
        click.echo(f"{'ok ' if ok else 'NO '} {name:<14} {value}")

    line("python", platform.python_version())
    available = onnxruntime.get_available_providers()
    line("onnxruntime", f"{onnxruntime.__version__}; providers {', '.join(available)}")
    try:
        scorer = _scorer(model, None)
        line("cross-encoder", f"{scorer.model_id} {scorer.version} on {scorer.provider}")
    except RerankerError as exc:
        line("cross-encoder", str(exc), ok=False)
    from reranker.models import EMBEDDER_CACHE_NAME

    embedder_dir = ctx.obj.models_dir / EMBEDDER_CACHE_NAME
    line(
        "embedder",
        f"{embedder_dir} ({'assembled' if embedder_dir.is_dir() else 'assembled on first use'})",
    )
    try:
        from reranker.es.node import find_java_home

        line("jdk", str(find_java_home()))
    except RerankerError as exc:
        line("jdk", str(exc), ok=False)
    try:
        health = _client(ctx).cluster.health()
        line("elasticsearch", f"{ctx.obj.es_url}: {health['cluster_name']} is {health['status']}")
    except Exception as exc:  # any failure to reach the cluster is the finding itself
        line("elasticsearch", f"{ctx.obj.es_url} unreachable ({type(exc).__name__})", ok=False)
    if problems:
        sys.exit(1)


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


def _register_bench() -> None:
    # bench's errors reach RerankerGroup.invoke above, like every other command's.
    from reranker.bench import bench

    main.add_command(bench)


_register_bench()


def _register_clicks() -> None:
    # judgments from UBI clicks and the click simulator (reranker/cli_clicks.py)
    from reranker.cli_clicks import judgments_cmd, simulate_clicks_cmd

    main.add_command(judgments_cmd)
    main.add_command(simulate_clicks_cmd)


_register_clicks()

if __name__ == "__main__":
    main()
