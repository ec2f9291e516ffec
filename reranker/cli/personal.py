"""``reranker simulate-personal``: simulated users with hidden topical preferences, through
the proxy, to measure what personalisation gains (:mod:`reranker.evaluation.personal`)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from reranker.cli.common import es_client
from reranker.errors import ConfigError


def split_queries(
    dataset: Path, history: str, fit: str, later: str, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """The judged queries of each phase's split; where the history and fit splits are the
    same, its queries are halved between them (seeded), so no query is in both."""
    from reranker.corpus import load_qrels, load_queries

    queries = load_queries(dataset)

    def judged(split: str) -> list[tuple[str, str]]:
        qrels = load_qrels(dataset, split)
        return [(q, queries[q]) for q in qrels if q in queries]

    out = {"history": judged(history), "fit": judged(fit), "later": judged(later)}
    if history == fit:
        shuffled = list(out["history"])
        random.Random(seed).shuffle(shuffled)
        half = len(shuffled) // 2
        out["history"], out["fit"] = shuffled[:half], shuffled[half:]
    if {q for q, _ in out["later"]} & {q for q, _ in out["history"] + out["fit"]}:
        raise ConfigError("the later split shares queries with the history or fit split")
    return out


def load_topics(
    dataset: Path, topic_field: str | None, clusters: int, client: Any, index: str, seed: int
) -> dict[str, str]:
    """Each document's topic: a field of the corpus (``signals.site``), else a k-means
    cluster of the index's stored embeddings."""
    from reranker.corpus import read_jsonl
    from reranker.evaluation.personal import kmeans_topics

    if topic_field:
        topics = {}
        for _, row in read_jsonl(dataset / "corpus.jsonl"):
            value: Any = row
            for part in topic_field.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                topics[str(row["_id"])] = str(value)
        if not topics:
            raise ConfigError(f"no document of {dataset} has the field {topic_field}")
        return topics
    from elasticsearch.helpers import scan

    vectors = {
        hit["_id"]: hit["fields"]["embedding"]
        for hit in scan(client, index=index, query={"_source": False, "fields": ["embedding"]})
        if hit.get("fields", {}).get("embedding")
    }
    if len(vectors) < clusters:
        raise ConfigError(f"{index} holds {len(vectors)} embeddings, fewer than {clusters}")
    return kmeans_topics(vectors, clusters, seed)


def wait_and_update(client: Any, events_index: str, application: str, accepted: int) -> Any:
    """Wait (≤ 60 s) until the ``accepted`` events of this run are stored, then update the
    profiles from them."""
    from reranker.es.profiles import update_profiles

    deadline = time.monotonic() + 60
    stored = 0
    while time.monotonic() < deadline:
        client.indices.refresh(index=events_index)
        stored = client.count(index=events_index, query={"term": {"application": application}})[
            "count"
        ]
        if stored >= accepted:
            break
        time.sleep(0.5)
    report = update_profiles(client, events_index=events_index, settle_s=0.0)
    return {"events_stored": stored, **report.__dict__}


@click.command("simulate-personal")
@click.argument("dataset", type=click.Path(path_type=Path, file_okay=False))
@click.option("--proxy", required=True, help="The proxy's URL (reranker serve --ubi).")
@click.option("--index", required=True, help="Index or alias searched through the proxy.")
@click.option("--topic-field", default=None, help="The corpus field of a topic (signals.site).")
@click.option("--clusters", type=click.IntRange(min=2), default=8, show_default=True,
              help="Without --topic-field: topics are this many k-means clusters.")  # fmt: skip
@click.option("--splits", default="train,dev,test", show_default=True,
              help="The history, fit and later splits (history = fit: halved).")  # fmt: skip
@click.option("--users", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--history", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--fit", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--later", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--preference", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Attractiveness a document of the user's topic gains.")  # fmt: skip
@click.option("--focus", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Probability a user's query is one of their topic's.")  # fmt: skip
@click.option("--window", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--api-key", envvar="RERANKER_SIM_API_KEY", default=None, help="Proxy API key.")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.pass_context
def simulate_personal_cmd(ctx: click.Context, /, **o: Any) -> None:
    """Simulated users (not real ones) with a hidden favourite topic search DATASET through
    the proxy: their clicks on the history split build their profiles, the fit split learns
    the personal weight, and the later split compares clicks-NDCG@10 unpersonalised and
    personalised (see reranker/evaluation/personal.py). The report is JSON."""
    import httpx

    from reranker.evaluation.personal import Plan, PreferenceModel, Simulation, run_simulation

    history, fit, later = _three(o["splits"])
    client = es_client(ctx)
    splits = split_queries(o["dataset"], history, fit, later, o["seed"])
    topics = load_topics(o["dataset"], o["topic_field"], o["clusters"], client, o["index"],
                         o["seed"])  # fmt: skip
    plan = Plan(users=o["users"], history=o["history"], fit=o["fit"], later=o["later"],
                window=o["window"], seed=o["seed"], focus=o["focus"])  # fmt: skip
    application = f"personal-sim-{uuid.uuid4().hex[:8]}"
    headers = {"authorization": f"ApiKey {o['api_key']}"} if o["api_key"] else None
    from reranker.corpus import load_qrels

    qrels = {**load_qrels(o["dataset"], history), **load_qrels(o["dataset"], fit),
             **load_qrels(o["dataset"], later)}  # fmt: skip

    async def run() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=o["proxy"].rstrip("/"), timeout=120) as http:
            sim = Simulation(http, o["index"], qrels, topics,
                             PreferenceModel(preference=o["preference"]), plan, headers,
                             application)  # fmt: skip

            async def update(accepted: int) -> dict[str, Any]:
                return await asyncio.to_thread(
                    wait_and_update, client, "ubi_events", application, accepted
                )

            return await run_simulation(sim, splits, update)

    report = asyncio.run(run())
    report.update(dataset=str(o["dataset"]), splits=o["splits"], index=o["index"],
                  preference=o["preference"], focus=o["focus"], seed=o["seed"],
                  topics_from=o["topic_field"] or f"k-means, {o['clusters']} clusters")  # fmt: skip
    text = json.dumps(report, indent=2)
    if o["output"] is not None:
        o["output"].parent.mkdir(parents=True, exist_ok=True)
        o["output"].write_text(text + "\n", encoding="utf-8")
    click.echo(text)


def _three(raw: str) -> Sequence[str]:
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"--splits {raw!r}: give three splits, history,fit,later")
    return parts
