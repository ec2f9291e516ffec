"""What the commands share: the group class that maps errors to exit codes, and the options and
loaders several commands use."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from elasticsearch import ConnectionError as ESConnectionError

from reranker.config import Settings
from reranker.errors import RerankerError

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from reranker.rerank.rescore import Rescore
    from reranker.retrieval.embed_cache import EmbeddingCache, TextEncoder
    from reranker.retrieval.embedder import Embedder
    from reranker.retrieval.remote_embedder import RemoteEmbedder

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
            unreachable = unreachable_cause(exc)
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


def unreachable_cause(exc: BaseException) -> str | None:
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


def es_client(ctx: click.Context) -> Elasticsearch:
    from reranker.es.client import make_client

    settings: Settings = ctx.obj
    return make_client(settings)


def query_embedder(ctx: click.Context) -> Embedder:
    from reranker.retrieval.embedder import Embedder

    return Embedder.default(ctx.obj)


def rescore_encoder(ctx: click.Context) -> TextEncoder | None:
    """The second embedder (``--rescore-embedder``; none with ``none``), loaded once per
    command."""
    from reranker.rerank.rescore import rescore_embedder

    memo = ctx.find_root().meta
    if "reranker.rescore_encoder" not in memo:
        memo["reranker.rescore_encoder"] = rescore_embedder(ctx.obj)
    encoder: TextEncoder | None = memo["reranker.rescore_encoder"]
    return encoder


def alias_rescore(ctx: click.Context, alias: str, meta: dict[str, Any]) -> Rescore | None:
    """The second embedder for reranking ALIAS's window: this command's, when the index holds
    its vectors (``meta``, :func:`alias_meta`); else none, with a note when the index holds
    another's."""
    from reranker.es.mappings import RESCORE_META_KEY
    from reranker.rerank.rescore import Rescore

    stored = meta.get(RESCORE_META_KEY)
    if not stored:
        return None
    encoder = rescore_encoder(ctx)
    if encoder is None or encoder.model_id != stored:
        ours = encoder.model_id if encoder is not None else "none"
        click.echo(
            f"note: {alias} holds second-embedder vectors of {stored}, this command's second "
            f"embedder is {ours}: the window is reranked without them (reindex to change)",
            err=True,
        )
        return None
    return Rescore(encoder)


def alias_meta(client: Elasticsearch, alias: str) -> dict[str, Any]:
    """What the index behind ``alias`` recorded at indexing (its ``_meta.reranker``): the
    embedder, its folder, passages; ``{}`` when there is no such index yet (eval builds it) or
    it cannot be read (the command itself then says what is wrong)."""
    from reranker.es.mappings import index_meta

    try:
        return dict(index_meta(client, alias))
    except Exception:
        return {}


def alias_embedder(ctx: click.Context, alias: str, meta: dict[str, Any]) -> Embedder:
    """The embedder for ALIAS's queries: the one named (--embedder, RERANKER_EMBEDDER), else
    the one the index was built with (``meta``, :func:`alias_meta`) when its folder is on this
    machine and still holds that model (an adapted embedder after `reranker adapt --reindex`),
    else the default."""
    from reranker.retrieval.embedder import DEFAULT_EMBEDDER_DIR, Embedder

    settings: Settings = ctx.obj
    if settings.embedder is None:
        folder = meta.get("embedder_dir")
        if folder and Path(folder).is_dir() and Path(folder) != DEFAULT_EMBEDDER_DIR.resolve():
            # (the default folder needs no note: Embedder.default loads it below)
            try:
                recorded = Embedder(Path(folder))
            except Exception:  # not loadable any more: the default, as before
                recorded = None
            if recorded is not None and recorded.model_id == meta.get("embedder"):
                click.echo(f"note: embedding queries with {folder}, {alias}'s embedder", err=True)
                return recorded
    return Embedder.default(settings)


#: how long one batch of documents may take an embedder endpoint when indexing
INDEXING_EMBED_TIMEOUT_S = 120.0


def remote_embedder(
    ctx: click.Context,
    urls: tuple[str, ...] = (),
    *,
    timeout_s: float = 30.0,
    health_interval_s: float = 0.0,
) -> RemoteEmbedder | None:
    """The embedder behind ``urls`` (``--embedder-url``), else behind ``RERANKER_EMBEDDER_URLS``;
    ``None`` when neither names one. Waits up to 30 s for a first endpoint to answer."""
    settings: Settings = ctx.obj
    chosen = urls or settings.embedder_urls
    if not chosen:
        return None
    if settings.embedder is not None:
        raise click.UsageError(
            "--embedder names a local embedder and --embedder-url (or RERANKER_EMBEDDER_URLS) "
            "remote ones: give one of them"
        )
    from reranker.retrieval.remote_embedder import RemoteEmbedder

    return RemoteEmbedder(
        chosen,
        api_key=settings.embedder_api_key,
        timeout_s=timeout_s,
        wait_s=30.0,
        health_interval_s=health_interval_s,
    )


def indexing_tools(
    ctx: click.Context, embedder_urls: tuple[str, ...] = (), *, alias: str | None = None
) -> tuple[Elasticsearch, TextEncoder, EmbeddingCache]:
    """What indexing a corpus needs: the client, the embedder (remote when ``embedder_urls``
    or ``RERANKER_EMBEDDER_URLS`` name endpoints, else in process: with ``alias``, the one
    :func:`alias_embedder` finds), and the cache of that embedder's document vectors in
    ``RERANKER_HOME``."""
    from reranker.es.indexing import default_cache

    client = es_client(ctx)
    # a batch of documents on a CPU endpoint takes seconds, more on a busy machine
    remote = remote_embedder(ctx, embedder_urls, timeout_s=INDEXING_EMBED_TIMEOUT_S)
    if remote is None and alias is not None:
        embedder: TextEncoder = alias_embedder(ctx, alias, alias_meta(client, alias))
    else:
        embedder = remote or query_embedder(ctx)
    return client, embedder, default_cache(ctx.obj.home, embedder)


def default_model_dir() -> Path:
    """The cross-encoder used when none is named: ``RERANKER_MODEL``, else the shipped one."""
    from reranker.rerank.scorer import default_model_dir as scoring_default

    return scoring_default()


def scorer_url_option(command: Any) -> Any:
    return click.option(
        "--scorer-url",
        "scorer_urls",
        multiple=True,
        help="Score through this rerank endpoint (`reranker serve --scorer-only` or a "
        "text-embeddings-inference server) instead of loading a model; repeatable: requests "
        "are spread across them, with fail-over [serve: env RERANKER_PROXY_SCORER_URLS, "
        "comma-separated].",
    )(command)


def embedder_url_option(command: Any) -> Any:
    return click.option(
        "--embedder-url",
        "embedder_urls",
        multiple=True,
        help="Embed through this /embed endpoint (`reranker serve --embedder-only` or a "
        "text-embeddings-inference server) instead of loading the embedder; repeatable: "
        "batches are spread across them, with fail-over [env RERANKER_EMBEDDER_URLS, "
        "comma-separated].",
    )(command)


def load_cli_scorer(model: Path | None, variant: str | None) -> Any:
    from reranker.rerank.scorer import load_scorer

    return load_scorer(model, variant)


# --------------------------------------------------------------------------- search


def hybrid_options(func: F) -> F:
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


def diversity_options(func: F) -> F:
    """``--diversity LAMBDA``, ``--diversity-method`` and ``--duplicate-threshold`` (see
    :func:`parse_diversity`)."""
    from reranker.rerank.diversity import DEFAULT_LAMBDAS

    func = click.option(
        "--diversity",
        type=click.FloatRange(0.0, 1.0),
        default=None,
        help="Diversify the reranked list with the documents' stored embeddings, trading "
        "λ · relevance against (1 − λ) · redundancy (1 keeps the order; "
        f"{DEFAULT_LAMBDAS['swap']} for swap, {DEFAULT_LAMBDAS['mmr']} for mmr were chosen on "
        "dev; docs/experiments/diversity.md).",
    )(func)
    func = click.option(
        "--diversity-method",
        type=click.Choice(["swap", "mmr"]),
        default=None,
        help="With --diversity: swap (up to two hits of the first page exchanged for less "
        "redundant ones below it, where the expected gain allows) or mmr (maximal marginal "
        "relevance down the whole window).  [default: swap]",
    )(func)
    func = click.option(
        "--duplicate-threshold",
        type=click.FloatRange(0.0, 1.0, min_open=True),
        default=None,
        help="With --diversity: hits whose cosine to a hit above reaches this go last.",
    )(func)
    return func


def passages_option(func: F) -> F:
    """``--passages max|firstmax|none``: long documents scored by their passages."""
    return click.option(
        "--passages",
        type=click.Choice(["max", "firstmax", "none"]),
        default=None,
        help="Score documents longer than the cross-encoder reads by overlapping passages, "
        "combined by their best (max) or the mean of the first and the best (firstmax), or "
        "truncate them (none) [default: the index's choice (`index --passages`), else "
        "truncate; docs/experiments/passages.md].",
    )(func)


def passages_for(meta: dict[str, Any], asked: str | None) -> str | None:
    """The combination a search of an index uses: ``asked`` (``none``: truncate), else the one
    the index recorded at indexing (``meta``, :func:`alias_meta`), else none."""
    if asked is not None:
        return None if asked == "none" else asked
    from reranker.es.mappings import PASSAGES_META_KEY

    recorded = meta.get(PASSAGES_META_KEY)
    return str(recorded) if recorded else None


def parse_diversity(
    lam: float | None, duplicate_threshold: float | None, method: str | None = None
) -> Any:
    """The :class:`~reranker.rerank.diversity.Diversity` the options ask for, or ``None``."""
    from reranker.rerank.diversity import Diversity

    if lam is None:
        if duplicate_threshold is not None:
            raise click.BadParameter("needs --diversity", param_hint="--duplicate-threshold")
        if method is not None:
            raise click.BadParameter("needs --diversity", param_hint="--diversity-method")
        return None
    return Diversity(lam, duplicate_threshold, "mmr" if method == "mmr" else "swap")


def parse_hybrid(fusion: str, rank_constant: int, normalization: str, weights: str | None) -> Any:
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
