"""``reranker serve``: the search proxy and rerank API."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click

from reranker.cli.common import (
    default_model_dir,
    embedder_url_option,
    load_cli_scorer,
    query_embedder,
    remote_embedder,
    rescore_encoder,
    scorer_url_option,
)
from reranker.config import MODEL_VARIANTS

# --------------------------------------------------------------------------- serve


@click.command("serve")
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
@click.option(
    "--embedder-only",
    is_flag=True,
    default=None,
    help="Serve only the embedder (POST /embed, GET /info) with /_health and /metrics: no "
    "cross-encoder, no Elasticsearch; what --embedder-url points at "
    "[env RERANKER_PROXY_EMBEDDER_ONLY].",
)
@scorer_url_option
@embedder_url_option
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
    embedder_only: bool | None,
    scorer_urls: tuple[str, ...],
    embedder_urls: tuple[str, ...],
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
    `--embedder-only` serves just the embedder (TEI's POST /embed), which `--embedder-url` of
    `serve` and `index` embeds through.
    """
    from reranker.proxy import ProxySettings, serve
    from reranker.proxy.blends import parse_pairs

    overrides: dict[str, Any] = {
        "es": ctx.obj,
        "host": host,
        "port": port,
        "scorer_only": scorer_only,
        "embedder_only": embedder_only,
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
    if scorer_urls:  # remote scorers: the endpoints load (and reload) the model
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
        model_loader=None
        if settings.scorer_urls or settings.embedder_only
        else lambda folder, chosen: load_cli_scorer(folder or model, chosen or variant),
        # the embedder: kNN queries, and the dense score a first-stage-aware model reads where
        # no kNN gave one (a BM25-only search, the rerank API); remote with --embedder-url
        encoder_factory=_encoder_factory(ctx, settings, embedder_urls),
        rescore_factory=_rescore_factory(ctx, settings),
        json_logs=log_format == "json",
    )


def _encoder_factory(ctx: click.Context, settings: Any, urls: tuple[str, ...]) -> Any:
    """The served embedder: through ``urls`` (else ``RERANKER_EMBEDDER_URLS``) when they name
    endpoints, health-checked every 5 s, each request within the proxy's default timeout;
    else loaded here. An embedder-only server is an endpoint: it embeds in process."""
    if (urls or ctx.obj.embedder_urls) and ctx.obj.embedder is not None:
        raise click.UsageError(
            "--embedder names a local embedder and --embedder-url (or RERANKER_EMBEDDER_URLS) "
            "remote ones: give one of them"
        )
    if settings.embedder_only and (urls or ctx.obj.embedder_urls):
        raise click.UsageError(
            "an embedder-only server embeds in process: drop --embedder-url "
            "(and RERANKER_EMBEDDER_URLS)"
        )

    def build() -> Any:
        timeout_s = settings.default_timeout_ms / 1000
        remote = remote_embedder(ctx, urls, timeout_s=timeout_s, health_interval_s=5.0)
        return remote or query_embedder(ctx)

    return build


def _rescore_factory(ctx: click.Context, settings: Any) -> Any:
    """The second embedder's loader (none for an embedder-only server, or with
    ``--rescore-embedder none``): searches add its cosine, and so does the rerank API for a
    first-stage-aware model."""
    from reranker.rerank.rescore import NO_RESCORE

    if settings.embedder_only:
        return None
    if str(ctx.obj.rescore_embedder) == NO_RESCORE:
        return None

    def build() -> Any:
        encoder = rescore_encoder(ctx)
        assert encoder is not None  # NO_RESCORE was handled above
        return encoder

    return build


def _serve_cascade_defaults(settings: Any, cascade_k: int | None) -> Any:
    """The served defaults chosen on dev queries: the first stage as the cascade's cheap
    level and k = 20, unless the command line or the environment said otherwise (`none`
    for no cascade model, k = 0 for no default cascade)."""
    from reranker.rerank.cascade import DEFAULT_CASCADE_K, FIRST_STAGE_STUDENT, NO_CASCADE

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
