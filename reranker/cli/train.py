"""``reranker train``, ``distill``, ``train-embedder`` and ``export``: models from data, and to
ONNX."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import click

from reranker.cli.common import es_client, query_embedder
from reranker.config import Settings

# --------------------------------------------------------------------------- model path


@dataclass(frozen=True)
class TrainArgs:
    """``train_cmd``'s options, as click parsed them."""

    data: tuple[Path, ...]
    output_dir: Path
    base_model: Path | None
    max_length: int
    batch_size: int
    lr: float
    epochs: int
    max_steps: int | None
    exclude_source: tuple[str, ...]
    dev: Path | None
    loss: str
    group_size: int
    negatives_per_positive: int
    bm25_depth: int
    first_stage_aware: bool
    head_lr: float
    dev_fraction: float
    eval_every: int | None
    heads: str
    loss_weights: str | None
    click_events: Path | None
    click_min_examinations: float
    threads: int | None
    seed: int
    resume: bool
    overwrite: bool


@click.command("train")
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
def train_cmd(**options: Any) -> None:
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
    run_train(TrainArgs(**options))


def run_train(a: TrainArgs) -> None:
    import logging

    from reranker.errors import ConfigError
    from reranker.training.heads import parse_heads, parse_loss_weights

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        signal_heads = parse_heads(a.heads)
        weights = parse_loss_weights(a.loss_weights, signal_heads)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if (signal_heads or a.loss_weights or a.click_events) and not a.first_stage_aware:
        raise click.UsageError(
            "--heads, --loss-weights and --click-events need --first-stage-aware"
        )
    if a.first_stage_aware:
        _train_aware(a, signal_heads, weights)
        return
    from reranker.training.cross_encoder import train
    from reranker.training.cross_encoder_config import TrainConfig

    config = TrainConfig(
        train_files=list(a.data),
        output_dir=a.output_dir,
        base_model=a.base_model,
        max_length=a.max_length,
        batch_size=a.batch_size,
        lr=a.lr,
        epochs=a.epochs,
        max_steps=a.max_steps,
        exclude_sources=list(a.exclude_source),
        dev=a.dev,
        loss=cast(Any, a.loss),
        group_size=a.group_size,
        negatives_per_positive=a.negatives_per_positive,
        bm25_depth=a.bm25_depth,
        threads=a.threads,
        seed=a.seed,
        resume=a.resume,
        overwrite=a.overwrite,
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
    a: TrainArgs, signal_heads: tuple[str, ...], loss_weights: dict[str, float] | None
) -> None:
    from reranker.training.first_stage_aware import AwareTrainConfig, train_aware

    config = AwareTrainConfig(
        datasets=list(a.data),
        output_dir=a.output_dir,
        base_model=a.base_model,
        max_length=a.max_length,
        lr=a.lr,
        head_lr=a.head_lr,
        epochs=a.epochs,
        max_steps=a.max_steps,
        group_size=a.group_size,
        dev_fraction=a.dev_fraction,
        eval_every=a.eval_every,
        threads=a.threads,
        seed=a.seed,
        cache_dir=Settings.from_env().home / "embeddings",
        signal_heads=signal_heads,
        loss_weights=loss_weights,
        click_events=a.click_events,
        click_min_examinations=a.click_min_examinations,
    )
    info = train_aware(config, progress=True)
    chosen = info["chosen"]
    click.echo(
        f"trained {info['steps']} steps in {info['seconds'] / 60:.1f} min; kept the checkpoint "
        f"of step {int(chosen['step'])} (held-out NDCG@10 {json.dumps(chosen)}) in {a.output_dir}"
    )


@dataclass(frozen=True)
class DistillArgs:
    """``distill_cmd``'s options, as click parsed them."""

    teacher: Path
    datasets: tuple[Path, ...]
    output_dir: Path
    layers: int
    base_model: Path | None
    loss: str
    temperature: float
    window: int
    top: int
    sampled: int
    queries_per_step: int
    lr: float
    epochs: int
    max_steps: int | None
    eval_every: int
    cascade_k: int
    dev_max_queries: int
    max_queries: int | None
    threads: int | None
    seed: int
    overwrite: bool
    progress: bool


@click.command("distill")
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
def distill_cmd(ctx: click.Context, /, **options: Any) -> None:
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
    run_distill(ctx, DistillArgs(**options))


def run_distill(ctx: click.Context, a: DistillArgs) -> None:
    import logging

    from reranker.es.indexing import default_cache
    from reranker.training.distill import check_output_dir, distill
    from reranker.training.distill_config import DistillConfig
    from reranker.training.distill_data import load_teacher, query_splits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one line per search
    config = DistillConfig(
        teacher=a.teacher,
        datasets=list(a.datasets),
        output_dir=a.output_dir,
        layers=a.layers,
        base_model=a.base_model,
        loss=cast(Any, a.loss),
        temperature=a.temperature,
        window=a.window,
        top=a.top,
        sampled=a.sampled,
        queries_per_step=a.queries_per_step,
        lr=a.lr,
        epochs=a.epochs,
        max_steps=a.max_steps,
        eval_every=a.eval_every,
        cascade_k=a.cascade_k,
        dev_max_queries=a.dev_max_queries,
        max_queries=a.max_queries,
        threads=a.threads,
        seed=a.seed,
        overwrite=a.overwrite,
    )
    # everything that needs no Elasticsearch is checked before connecting
    for dataset in config.datasets:
        query_splits(dataset, dev_max_queries=config.dev_max_queries, seed=config.seed)
    load_teacher(config.teacher)
    check_output_dir(config.output_dir, config.overwrite)
    embedder = query_embedder(ctx)
    info = distill(
        config,
        es_client(ctx),
        embedder,
        score_cache=ctx.obj.home / "scores",
        embedding_cache=default_cache(ctx.obj.home, embedder),
        progress=a.progress,
    )
    chosen = info["distillation"]["chosen"] or {}
    click.echo(
        f"distilled a {a.layers}-layer student in {info['seconds'] / 60:.1f} min "
        f"({info['steps']} steps); kept step {chosen.get('step')} "
        f"(held-out {json.dumps(chosen.get('datasets', {}))}) in {a.output_dir}"
    )


@click.command("train-embedder")
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


@click.command("export")
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
