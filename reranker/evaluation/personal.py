"""Does personalisation help users whose clicks follow a hidden preference? A simulation
(**simulated users, not real behaviour**) through a running proxy with UBI on.

The user model extends :mod:`reranker.feedback.click_sim`'s: each simulated user has a
favourite *topic* (a Stack Exchange site, or a cluster of the index's embeddings), hidden
from the system. A user's query is, with probability ``focus``, one of their topic's (a
query's topic is its first relevant document's), else any. A document's attractiveness to a
user is ``click_probs[grade]`` (its qrels grade for the query) plus ``preference`` when it is
of the user's topic (capped at 1); a result at position ``k`` is examined with probability
``(1/k)^eta`` and clicked with its attractiveness plus Gaussian noise.

Three phases, on disjoint queries:

1. **history**: every user searches ``history`` queries (unpersonalised) and clicks; the
   clicks go through ``POST /_reranker/events`` (refusals for a full queue or the client's
   event rate are sent again, so none is lost); then the profiles are updated from them
   (:func:`reranker.es.profiles.update_profiles`).
2. **fit**: every user searches ``fit`` more queries, personalised with each weight of
   :data:`ARMS` in turn (an A/B/n test); the weight whose sessions' clicks have the highest
   mean DCG@10 is the one learned (position-biased clicks on a fixed order could not tell a
   preferred document from a relevant one; clicks on orders that differ can).
3. **later**: every user searches ``later`` test queries twice, unpersonalised and
   personalised with the learned weight. Reported: *clicks-NDCG@10*, the NDCG@10 of each
   ranking with the user's attractiveness of each document as its gain (the expected clicks
   an unbiased user would give it), the ideal taken over the same reranked window; and users
   without history, whose personalised answers must equal the unpersonalised ones.
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np

from reranker.feedback.click_sim import UserModel, post_events, session_events

APPLICATION = "personal-simulator"
#: the personal weights the fit sessions try, in turn (an A/B/n test read on clicks)
ARMS = (0.0, 0.5, 1.0, 2.0, 4.0)
#: how often a search the proxy refused as saturated (429) or unavailable (503) is sent again
RETRIES = 6
#: events refused for these reasons are sent again (after a back-off): none may be lost
RESEND = frozenset({"queue_full", "client_event_quota"})
NOTE = "simulated users with hidden topical preferences (reranker.evaluation.personal)"


@dataclass(frozen=True)
class SimUser:
    id: str
    favourite: str


@dataclass(frozen=True)
class PreferenceModel:
    """How a simulated user looks, clicks, and prefers (see the module's docstring)."""

    clicks: UserModel = field(default_factory=UserModel)
    preference: float = 0.3

    def attractiveness(self, grade: int, topic: str | None, user: SimUser) -> float:
        bonus = self.preference if topic is not None and topic == user.favourite else 0.0
        return min(1.0, self.clicks.attractiveness(grade) + bonus)

    def clicks_on(self, rng: random.Random, gains: Sequence[float]) -> list[bool]:
        return self.clicks.clicks_on(rng, gains)


@dataclass(frozen=True)
class Plan:
    """The simulation's sizes: users, sessions per phase, what a session shows."""

    users: int = 30
    history: int = 20
    fit: int = 10
    later: int = 10
    new_users: int = 5
    focus: float = 0.5
    size: int = 10
    window: int = 20
    seed: int = 13
    concurrency: int = 2


def clicks_ndcg(gains: Sequence[float], pool: Sequence[float], k: int = 10) -> float:
    """NDCG@k of a ranking whose documents have ``gains`` (in rank order), the ideal taken
    from the ``pool`` of gains the ranking chose from; 0.0 when the pool has none."""

    def dcg(values: Sequence[float]) -> float:
        return sum(g / math.log2(i + 2) for i, g in enumerate(values[:k]))

    ideal = dcg(sorted(pool, reverse=True))
    return dcg(gains) / ideal if ideal > 0 else 0.0


def make_users(topics: Sequence[str], count: int, seed: int, prefix: str) -> list[SimUser]:
    """``count`` users, their favourite topics spread evenly over ``topics``."""
    ordered = sorted(set(topics))
    random.Random(seed).shuffle(ordered)
    return [SimUser(f"{prefix}-{seed}-{i}", ordered[i % len(ordered)]) for i in range(count)]


class Simulation:
    """One run of the three phases against the proxy at ``http``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        index: str,
        qrels: Mapping[str, Mapping[str, int]],
        topics: Mapping[str, str],
        model: PreferenceModel,
        plan: Plan,
        headers: Mapping[str, str] | None = None,
        application: str = APPLICATION,
    ) -> None:
        self.http, self.index, self.qrels, self.topics = http, index, qrels, topics
        self.application = application
        self.model, self.plan, self.headers = model, plan, headers
        self.gate = asyncio.Semaphore(plan.concurrency)
        self.events: list[dict[str, Any]] = []
        self.posted = 0
        self.rejected: dict[str, int] = {}
        self.failed = 0

    def query_topic(self, query_id: str) -> str | None:
        """A query's topic: its first relevant document's."""
        relevant = [d for d, g in self.qrels.get(query_id, {}).items() if g > 0]
        return self.topics.get(relevant[0]) if relevant else None

    def gains(self, query_id: str, user: SimUser, doc_ids: Sequence[str]) -> list[float]:
        judged = self.qrels.get(query_id, {})
        return [
            self.model.attractiveness(max(0, judged.get(d, 0)), self.topics.get(d), user)
            for d in doc_ids
        ]

    async def search(
        self, user: SimUser, text: str, weight: float | None, *, explain: bool = False
    ) -> dict[str, Any] | None:
        rerank: dict[str, Any] = {"window": self.plan.window, "explain": explain}
        if weight is not None:
            rerank["personalize"] = {"weight": weight}
        body = {
            "query": {"multi_match": {"query": text, "fields": ["title", "text"]}},
            "size": self.plan.window,
            "_source": False,
            "rerank": rerank,
            "ext": {"ubi": {"user_id": user.id, "client_id": user.id,
                            "application": self.application, "user_query": text}},
        }  # fmt: skip
        for attempt in range(RETRIES + 1):  # a saturated proxy says when to come back
            async with self.gate:
                response = await self.http.post(
                    f"/{self.index}/_search", json=body, headers=self.headers
                )
            if response.status_code not in (429, 503) or attempt == RETRIES:
                break
            await asyncio.sleep(float(response.headers.get("retry-after") or 0.5) * 2**attempt)
        if response.status_code != 200:
            self.failed += 1
            return None
        answer: dict[str, Any] = response.json()
        return answer

    async def session(
        self, user: SimUser, query: tuple[str, str], number: int, weight: float | None,
        *, explain: bool = False,
    ) -> tuple[list[str], list[bool], dict[str, Any]] | None:  # fmt: skip
        """One search and its clicks (posted as events): the window's ids, the clicks on the
        shown top ``size``, the answer."""
        query_id, text = query
        answer = await self.search(user, text, weight, explain=explain)
        if answer is None:
            return None
        ids = [h["_id"] for h in answer["hits"]["hits"]]
        shown = ids[: self.plan.size]
        rng = random.Random(f"{self.plan.seed}:{user.id}:{query_id}:{number}")
        clicks = self.model.clicks_on(rng, self.gains(query_id, user, shown))
        self.events += session_events(
            answer["ext"]["ubi"]["query_id"], shown, clicks,
            session_id=f"{user.id}-{query_id}-{number}", client_id=user.id,
            application=self.application, when=datetime.now(UTC), rng=rng,
        )  # fmt: skip
        return ids, clicks, answer

    async def flush(self) -> None:
        """Post the clicks gathered (profiles read only clicks), sending again what a full
        queue or the client's event rate refused."""
        from reranker.feedback.click_sim import SimulationReport

        report = SimulationReport()
        clicks = [e for e in self.events if e["action_name"] == "click"]
        self.events = []
        while clicks:
            batch, clicks = clicks[:200], clicks[200:]
            await post_events(self.http, batch, self.headers, report, 6, 0.5, RESEND)
        self.posted += report.accepted
        for kind, count in report.rejected.items():
            self.rejected[kind] = self.rejected.get(kind, 0) + count


def assign(
    users: Sequence[SimUser],
    queries: Sequence[tuple[str, str]],
    per_user: int,
    seed: int,
    focus: float = 0.0,
    topic_of: Callable[[str], str | None] = lambda _: None,
) -> list[tuple[SimUser, tuple[str, str], int]]:
    """Each user's ``per_user`` queries, without repeats per user: each drawn, with
    probability ``focus``, from the queries of the user's favourite topic (``topic_of`` a
    query id; while there are any left), else from all of them."""
    plan = []
    for user in users:
        rng = random.Random(f"{seed}:{user.id}")
        mine = [q for q in queries if topic_of(q[0]) == user.favourite]
        rng.shuffle(mine)
        rest = list(queries)
        rng.shuffle(rest)
        chosen: list[tuple[str, str]] = []
        while len(chosen) < min(per_user, len(queries)):
            source = mine if mine and rng.random() < focus else rest
            query = source.pop()
            if query not in chosen:
                chosen.append(query)
        plan += [(user, query, number) for number, query in enumerate(chosen)]
    return plan


def click_dcg(clicks: Sequence[bool], k: int = 10) -> float:
    """DCG@k of a session's clicks (1 per clicked position): what an interleaving or A/B
    test reads, higher when the clicked documents stand higher."""
    return sum(1.0 / math.log2(i + 2) for i, clicked in enumerate(clicks[:k]) if clicked)


def chosen_weight(outcomes: Mapping[float, Sequence[float]]) -> float:
    """The arm (weight) whose sessions had the highest mean click DCG; ties go to the
    smaller weight, and an arm without sessions never wins."""
    scored = [(float(np.mean(v)), -w, w) for w, v in outcomes.items() if len(v)]
    return max(scored)[2] if scored else 0.0


async def run_simulation(
    sim: Simulation,
    splits: Mapping[str, Sequence[tuple[str, str]]],
    update_profiles: Callable[[int], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """The three phases (see the module's docstring); ``splits`` has ``history``, ``fit`` and
    ``later`` queries; ``update_profiles(accepted)`` waits until that many events are stored,
    then updates the profiles. The report."""
    plan = sim.plan
    topics = sorted(set(sim.topics.values()))
    # a run's users are new users: an earlier run's clicks (same seed, same index) must not
    # become their history, so the ids carry a tag of this run (the randomness stays seeded)
    run = uuid.uuid4().hex[:8]
    users = make_users(topics, plan.users, plan.seed, f"sim-person-{run}")
    history = assign(users, splits["history"], plan.history, plan.seed, plan.focus,
                     sim.query_topic)  # fmt: skip
    await asyncio.gather(*(sim.session(u, q, n, None) for u, q, n in history))
    await sim.flush()
    update = await update_profiles(sim.posted)
    fitted = assign(users, splits["fit"], plan.fit, plan.seed + 1, plan.focus, sim.query_topic)
    arms = [ARMS[n % len(ARMS)] for _, _, n in fitted]  # each user tries every arm in turn
    answers = await asyncio.gather(
        *(sim.session(u, q, n, arm) for (u, q, n), arm in zip(fitted, arms, strict=True))
    )
    outcomes: dict[float, list[float]] = {arm: [] for arm in ARMS}
    for arm, outcome in zip(arms, answers, strict=True):
        if outcome is not None:
            outcomes[arm].append(click_dcg(outcome[1]))
    weight = chosen_weight(outcomes)
    later = await compare(sim, users, splits["later"], weight)
    newcomers = make_users(topics, plan.new_users, plan.seed, f"sim-newcomer-{run}")
    fresh = await compare(sim, newcomers, splits["later"], weight)
    return {
        "note": NOTE,
        "run": run,
        "users": plan.users,
        "topics": len(topics),
        "clicks_accepted": sim.posted,
        "clicks_rejected": sim.rejected,
        "failed_searches": sim.failed,
        "profile_update": update,
        "fit_click_dcg_by_weight": {
            str(arm): round(float(np.mean(v)), 4) if v else None for arm, v in outcomes.items()
        },
        "learned_weight": weight,
        "later": later,
        "new_users": fresh,
    }


async def compare(
    sim: Simulation, users: Sequence[SimUser], queries: Sequence[tuple[str, str]], weight: float
) -> dict[str, Any]:
    """``users``' later sessions, unpersonalised and personalised: mean clicks-NDCG@10 of
    each, and in how many sessions the two orders were identical."""
    plan = sim.plan
    sessions = assign(users, queries, plan.later, plan.seed + 2, plan.focus, sim.query_topic)

    async def both(user: SimUser, query: tuple[str, str]) -> tuple[float, float, bool, bool]:
        plain = await sim.search(user, query[1], None)
        personal = await sim.search(user, query[1], weight)
        if plain is None or personal is None:
            return 0.0, 0.0, False, False
        a = [h["_id"] for h in plain["hits"]["hits"]]
        b = [h["_id"] for h in personal["hits"]["hits"]]
        pool = sim.gains(query[0], user, a)
        ndcg_a = clicks_ndcg(sim.gains(query[0], user, a), pool, plan.size)
        ndcg_b = clicks_ndcg(sim.gains(query[0], user, b), pool, plan.size)
        applied = bool(personal["rerank"].get("personalize", {}).get("applied"))
        return ndcg_a, ndcg_b, a == b, applied

    results = await asyncio.gather(*(both(u, q) for u, q, _ in sessions))
    plain = float(np.mean([r[0] for r in results])) if results else 0.0
    personal = float(np.mean([r[1] for r in results])) if results else 0.0
    return {
        "sessions": len(results),
        "clicks_ndcg@10_unpersonalised": round(plain, 4),
        "clicks_ndcg@10_personalised": round(personal, 4),
        "gain": round(personal - plain, 4),
        "identical_orders": sum(1 for r in results if r[2]),
        "personalised_sessions": sum(1 for r in results if r[3]),
    }


def kmeans_topics(vectors: Mapping[str, Sequence[float]], k: int, seed: int) -> dict[str, str]:
    """Topics as k-means clusters of the documents' embeddings (cosine, 20 rounds)."""
    ids = sorted(vectors)
    x = np.array([vectors[i] for i in ids], dtype=np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(ids), size=k, replace=False)]
    for _ in range(20):
        labels = np.argmax(x @ centres.T, axis=1)
        for c in range(k):
            members = x[labels == c]
            if len(members):
                centre = members.mean(axis=0)
                centres[c] = centre / max(float(np.linalg.norm(centre)), 1e-12)
    labels = np.argmax(x @ centres.T, axis=1)
    return {doc: f"cluster-{int(label)}" for doc, label in zip(ids, labels, strict=True)}
