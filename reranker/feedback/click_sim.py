"""A click simulator — synthetic users, **simulated clicks**, no real behaviour — to check that
click judgments (:mod:`reranker.feedback.judgments`) recover known relevance.

Simulated users issue a dataset's queries through the proxy (with UBI on), look at the
ranked list with a position bias and click with a probability set by the qrels grade of each
result, plus noise; the impressions and clicks go through the real ``POST
/_reranker/events`` into the real ``ubi_events`` index. Every number it yields is about
simulated users.

The user model (all seeded; :class:`UserModel`):

- a session is one query searched once, by one of the ``rankers`` (sessions of a query cycle
  through them: ``bm25`` is the query passed through as a ``multi_match`` on title and text,
  ``rerank`` the same query reranked by the proxy's cross-encoder over a ``window``), so a
  document is seen at different positions, which is what lets a click model tell position
  from relevance;
- every result shown (``size``, default 10) is an ``impression``;
- position ``k`` (1-based) is examined with probability ``(1/k)^eta`` (the power-law
  position bias of Joachims, Swaminathan and Schnabel, 2017; ``eta`` 1 by default);
- an examined result is clicked with probability ``click_probs[grade]`` (grade from the
  qrels, 0 when unjudged; grades above the list use its last value) plus Gaussian noise of
  standard deviation ``noise``, drawn per session and result and clipped to [0, 1];
- clicks are independent of each other (any number per session), as in the position-based
  model; event times follow the search by up to a second.

The random draws of a session come from its own generator seeded by (``seed``, query id,
session number), so a run is reproducible whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from reranker.errors import ConfigError, SearchError
from reranker.feedback.ubi import ubi_timestamp

RANKERS = ("bm25", "rerank")
NOTE = "simulated clicks: synthetic users (reranker.feedback.click_sim), not real behaviour"


@dataclass(frozen=True)
class UserModel:
    """How simulated users look and click (see the module's docstring)."""

    eta: float = 1.0
    click_probs: tuple[float, ...] = (0.05, 0.5, 0.9)
    noise: float = 0.1

    def __post_init__(self) -> None:
        if self.eta < 0 or self.noise < 0:
            raise ConfigError("eta and noise must be ≥ 0")
        if not self.click_probs or any(not 0 <= p <= 1 for p in self.click_probs):
            raise ConfigError("click probabilities must lie in [0, 1]")

    def examined(self, position: int) -> float:
        return float((1.0 / position) ** self.eta)

    def attractiveness(self, grade: int) -> float:
        return self.click_probs[min(max(grade, 0), len(self.click_probs) - 1)]

    def session(
        self, rng: random.Random, grades: Sequence[int]
    ) -> list[bool]:  # clicked, per position from 1
        return self.clicks_on(rng, [self.attractiveness(g) for g in grades])

    def clicks_on(self, rng: random.Random, attractiveness: Sequence[float]) -> list[bool]:
        """Clicked, per position from 1, on results of these attractivenesses (examined by
        position, clicked by attractiveness plus noise)."""
        clicks = []
        for position, value in enumerate(attractiveness, start=1):
            looked = rng.random() < self.examined(position)
            chance = min(1.0, max(0.0, value + rng.gauss(0.0, self.noise)))
            clicks.append(looked and rng.random() < chance)
        return clicks


@dataclass
class SimulationReport:
    searches: int = 0
    searches_by_ranker: dict[str, int] = field(default_factory=dict)
    failed_searches: int = 0
    events_posted: int = 0
    accepted: int = 0
    events_resent: int = 0
    """Sends after the first of events the proxy refused with ``queue_full`` (429: valid, but its
    write queue was full), which its answer says to send again."""
    rejected: dict[str, int] = field(default_factory=dict)
    impressions: int = 0
    clicks: int = 0
    clicks_by_position: dict[int, int] = field(default_factory=dict)
    relevant_shown: int = 0

    def count_session(
        self, ranker: str, shown: int, grades: Sequence[int], clicks: Sequence[bool]
    ) -> None:
        """One session's search: what it showed, how much of it was relevant, its clicks."""
        self.searches += 1
        self.searches_by_ranker[ranker] = self.searches_by_ranker.get(ranker, 0) + 1
        self.impressions += shown
        self.relevant_shown += sum(1 for g in grades if g > 0)
        for position, clicked in enumerate(clicks, start=1):
            if clicked:
                self.clicks += 1
                self.clicks_by_position[position] = self.clicks_by_position.get(position, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "note": NOTE,
            "searches": self.searches,
            "searches_by_ranker": self.searches_by_ranker,
            "failed_searches": self.failed_searches,
            "events_posted": self.events_posted,
            "events_accepted": self.accepted,
            "events_resent": self.events_resent,
            "events_rejected": self.rejected,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "ctr_by_position": {
                str(k): round(v / max(1, self.searches), 4)
                for k, v in sorted(self.clicks_by_position.items())
            },
            "relevant_results_shown": self.relevant_shown,
        }


def search_body(
    ranker: str, text: str, size: int, window: int, ubi: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "query": {"multi_match": {"query": text, "fields": ["title", "text"]}},
        "size": size,
        "_source": False,
        "ext": {"ubi": ubi},
    }
    if ranker == "rerank":
        body["ext"]["rerank"] = {"window": max(window, size)}
    elif ranker != "bm25":
        raise ConfigError(f"unknown ranker {ranker!r}; choose from {', '.join(RANKERS)}")
    return body


def session_events(
    query_id: str,
    hits: Sequence[str],
    clicks: Sequence[bool],
    *,
    session_id: str,
    client_id: str,
    application: str,
    when: datetime,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """UBI events of one session: an impression per result shown, then its clicks."""

    def event(action: str, doc_id: str, position: int, at: datetime) -> dict[str, Any]:
        return {
            "action_name": action,
            "query_id": query_id,
            "session_id": session_id,
            "client_id": client_id,
            "application": application,
            "timestamp": ubi_timestamp(at),
            "event_attributes": {
                "object": {"object_id": doc_id, "object_id_field": "_id"},
                "position": {"ordinal": position},
            },
        }

    out = [event("impression", d, k, when) for k, d in enumerate(hits, start=1)]
    for position, (doc_id, clicked) in enumerate(zip(hits, clicks, strict=True), start=1):
        if clicked:
            out.append(event("click", doc_id, position, when + timedelta(seconds=rng.random())))
    return out


async def simulate(
    http: httpx.AsyncClient,
    index: str,
    queries: Sequence[tuple[str, str]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    sessions: int = 10,
    size: int = 10,
    window: int = 20,
    rankers: Sequence[str] = RANKERS,
    model: UserModel | None = None,
    seed: int = 13,
    batch_size: int = 200,
    concurrency: int = 4,
    headers: Mapping[str, str] | None = None,
    application: str = "click-simulator",
    resend_attempts: int = 5,
    resend_backoff_s: float = 0.05,
) -> SimulationReport:
    """Run ``sessions`` simulated sessions of each ``(query id, text)`` through the proxy at
    ``http`` and post their events; what happened, counted.

    Events the proxy refuses with ``queue_full`` are sent again, up to ``resend_attempts``
    times, after ``resend_backoff_s`` doubling each time; sessions wait meanwhile (the full
    queue slows the simulated users down). Those still refused then count as rejected."""
    _check_options(min(sessions, size, batch_size, concurrency), resend_attempts, resend_backoff_s)
    _check_rankers(rankers, size, window)
    model = model or UserModel()
    report = SimulationReport()
    pending: list[dict[str, Any]] = []
    gate, lock = asyncio.Semaphore(concurrency), asyncio.Lock()

    async def flush() -> None:
        while pending:  # batches of at most batch_size events (the proxy has a limit)
            batch, pending[:] = pending[:batch_size], pending[batch_size:]
            await post_events(http, batch, headers, report, resend_attempts, resend_backoff_s)

    async def run(query_id: str, text: str, number: int) -> None:
        rng = random.Random(f"{seed}:{query_id}:{number}")
        ranker = rankers[number % len(rankers)]
        user = f"sim-user-{rng.randrange(10**9)}"
        ubi = {"user_query": text, "client_id": user, "application": application}
        body = search_body(ranker, text, size, window, ubi)
        async with gate:
            response = await http.post(f"/{index}/_search", json=body, headers=headers)
        if response.status_code != 200:
            report.failed_searches += 1
            return
        answer = response.json()
        hits = [hit["_id"] for hit in answer["hits"]["hits"]]
        judged = qrels.get(query_id, {})
        grades = [max(0, judged.get(doc_id, 0)) for doc_id in hits]
        clicks = model.session(rng, grades)
        events = session_events(
            answer["ext"]["ubi"]["query_id"],
            hits,
            clicks,
            session_id=f"sim-session-{seed}-{query_id}-{number}",
            client_id=ubi["client_id"],
            application=application,
            when=datetime.now(UTC),
            rng=rng,
        )
        async with lock:
            report.count_session(ranker, len(hits), grades, clicks)
            pending.extend(events)
            if len(pending) >= batch_size:
                await flush()

    plan = [(query_id, text, number) for query_id, text in queries for number in range(sessions)]
    random.Random(seed).shuffle(plan)
    await asyncio.gather(*(run(*item) for item in plan))
    async with lock:
        await flush()
    return report


def _check_options(smallest_count: int, resend_attempts: int, resend_backoff_s: float) -> None:
    if smallest_count < 1:
        raise ConfigError("sessions, size, batch size and concurrency must be at least 1")
    if resend_attempts < 0 or resend_backoff_s < 0:
        raise ConfigError("resend attempts and back-off must not be negative")


def _check_rankers(rankers: Sequence[str], size: int, window: int) -> None:
    if not rankers:
        raise ConfigError("no ranker to simulate")
    for ranker in rankers:
        search_body(ranker, "x", size, window, {})  # unknown names fail before any search


async def post_events(
    http: httpx.AsyncClient,
    batch: list[dict[str, Any]],
    headers: Mapping[str, str] | None,
    report: SimulationReport,
    resend_attempts: int,
    resend_backoff_s: float,
    resend: frozenset[str] = frozenset({"queue_full"}),
) -> None:
    """Post ``batch``, sending again what was refused for a reason in ``resend`` (a full
    queue; a client over its event rate, for a simulation that must not lose any), with
    back-off."""
    report.events_posted += len(batch)
    for attempt in range(resend_attempts + 1):
        final = attempt == resend_attempts
        refused = await _send_events(http, batch, headers, report, final=final, resend=resend)
        if not refused:
            return
        # back off, then send only what the full queue refused (the rest is stored)
        await asyncio.sleep(resend_backoff_s * 2**attempt)
        report.events_resent += len(refused)
        batch = refused


async def _send_events(
    http: httpx.AsyncClient,
    batch: list[dict[str, Any]],
    headers: Mapping[str, str] | None,
    report: SimulationReport,
    *,
    final: bool,
    resend: frozenset[str] = frozenset({"queue_full"}),
) -> list[dict[str, Any]]:
    """Post ``batch``; the events refused for a reason in ``resend`` (counted when
    ``final``)."""
    body = "".join(_json_line(event) for event in batch)
    response = await http.post(
        "/_reranker/events",
        content=body.encode("utf-8"),
        headers={**(headers or {}), "content-type": "application/x-ndjson"},
    )
    if response.status_code != 200:
        raise SearchError(
            f"POST /_reranker/events answered {response.status_code}: {response.text[:300]}"
        )
    answer = response.json()
    report.accepted += int(answer["accepted"])
    refused: list[dict[str, Any]] = []
    for event, item in zip(batch, answer["items"], strict=True):
        if "error" not in item:
            continue
        kind = item["error"]["type"]
        if kind in resend and not final:
            refused.append(event)
        else:
            report.rejected[kind] = report.rejected.get(kind, 0) + 1
    return refused


def _json_line(event: Mapping[str, Any]) -> str:
    import json

    return json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"


def pick_queries(
    queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], count: int, seed: int
) -> list[tuple[str, str]]:
    """``count`` judged queries of the split (a seeded sample, in qrels order)."""
    judged = [q for q in qrels if q in queries and any(g > 0 for g in qrels[q].values())]
    if not judged:
        raise ConfigError("no judged query of the split is in queries.jsonl")
    chosen = set(random.Random(seed).sample(judged, min(count, len(judged))))
    return [(q, queries[q]) for q in judged if q in chosen]
