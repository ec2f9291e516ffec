"""The ``reranker`` command group: global options, and every command registered on it."""

from __future__ import annotations

from pathlib import Path

import click

from reranker.cli.adapt import adapt_cmd
from reranker.cli.bench import bench
from reranker.cli.clicks import judgments_cmd, simulate_clicks_cmd
from reranker.cli.common import EXIT_CODES_HELP, RerankerGroup
from reranker.cli.doctor import doctor_cmd
from reranker.cli.es import es
from reranker.cli.eval import eval_cmd
from reranker.cli.index import index_cmd, reindex_cmd
from reranker.cli.ltr import ltr
from reranker.cli.personal import simulate_personal_cmd
from reranker.cli.profiles import profiles
from reranker.cli.search import search_cmd
from reranker.cli.serve import serve_cmd
from reranker.cli.train import distill_cmd, export_cmd, train_cmd, train_embedder_cmd
from reranker.config import Settings


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
@click.option(
    "--rescore-embedder",
    envvar="RERANKER_RESCORE_EMBEDDER",
    type=click.Path(path_type=Path),
    default=None,
    help="Second embedder folder: `index` stores each document's vector of it (not searched), "
    "and reranking adds its cosine to the cross-encoder's score for indices that hold them; "
    "`none` for no second embedder [env RERANKER_RESCORE_EMBEDDER; default: the shipped "
    "bge-small-en-v1.5 (int8), chosen on dev queries].",
)
@click.version_option(package_name="reranker")
@click.pass_context
def main(
    ctx: click.Context, es_url: str | None, embedder: Path | None, rescore_embedder: Path | None
) -> None:
    """Hybrid search reranking in front of Elasticsearch.

    Elasticsearch recalls candidates (BM25 and kNN); an ONNX cross-encoder reranks them.
    Start with `reranker es up`, then `reranker index` a corpus and `reranker eval` it.
    """
    ctx.obj = Settings.from_env(es_url=es_url, embedder=embedder, rescore_embedder=rescore_embedder)


for command in (
    es,
    index_cmd,
    reindex_cmd,
    search_cmd,
    eval_cmd,
    train_cmd,
    distill_cmd,
    train_embedder_cmd,
    adapt_cmd,
    export_cmd,
    serve_cmd,
    ltr,
    profiles,
    doctor_cmd,
    bench,
    judgments_cmd,
    simulate_clicks_cmd,
    simulate_personal_cmd,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
