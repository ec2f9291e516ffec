"""Judgments from clicks: UBI impression and click events → graded qrels, with a click model.

Events are UBI documents (``ubi_events``, as ``POST /_reranker/events`` stores them; see
:mod:`reranker.proxy.events`), read from Elasticsearch or from a JSONL export. Each search
(``query_id``) is a list of results shown, each at its position (``event_attributes.position
.ordinal``), clicked or not: an ``impression`` says a result was shown, a ``click`` (or
``click_through``) that it was clicked; a click implies its impression. Searches are grouped
into queries by their ``user_query`` (whitespace collapsed), and a *pair* is (query,
document).

Click models (Chuklin, Markov and de Rijke, *Click Models for Web Search*, 2015, ch. 3–4):

- ``coec`` — clicks over expected clicks (Zhang and Jones, 2007): with ``ctr_k`` the click
  rate of position ``k`` over all searches, a pair's score is its clicks divided by
  ``Σ ctr_k`` over its impressions: 1.0 is an average result, 2.0 twice as attractive.
- ``pbm`` — the position-based model ``P(click) = θ_k · α_qd`` (examination of position
  ``k`` times the pair's attractiveness), fitted by expectation–maximisation: for a shown
  result that was not clicked, the E-step splits it between "not examined" and "examined but
  not attractive" in proportion ``(1-θ)α : θ(1-α)``; the M-step sets ``θ_k`` to the expected
  examined share at position ``k`` and ``α`` to the expected attractive share of a pair's
  impressions, shrunk towards the mean attractiveness of all impressions by
  ``prior_strength`` pseudo-impressions (2 by default; an empirical-Bayes Beta prior,
  re-estimated every iteration): a pair seen only where nobody looks stays near the average
  instead of the 0.5 a flat prior would give it. The fit stops when the log-likelihood gains
  less than ``tol`` of itself in an iteration (or after ``iterations``); ``θ`` is then scaled
  so that ``θ_1 = 1`` (the top result is always looked at) and ``α`` accordingly, so ``α``
  reads as the click probability of the pair at the top.
- ``ctr`` — the plain click rate, with no position correction (a baseline).

A pair is judged only with at least ``min_impressions`` impressions and, optionally for
``pbm``, at least ``min_examinations`` expected examinations (``Σ θ_k`` over its
impressions: ten impressions at position 10 are about one look). Its grade is the number
of ``thresholds`` its score reaches (two thresholds → grades 0, 1, 2, like BEIR's graded
qrels). The qrels file has BEIR's layout (header ``query-id corpus-id score``), the form
``reranker train``, ``reranker ltr`` and ``reranker eval`` read from ``<dataset>/qrels/``;
it is written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reranker.corpus import Qrels
from reranker.errors import ConfigError, MalformedLineError, SourceError

CLICK_ACTIONS = ("click", "click_through")
IMPRESSION_ACTIONS = ("impression",)
MODELS = ("pbm", "coec", "ctr")
#: grade thresholds per model (a score reaching the i-th threshold has grade ≥ i + 1)
DEFAULT_THRESHOLDS: dict[str, tuple[float, ...]] = {
    "pbm": (0.2, 0.5),
    "coec": (0.75, 2.0),
    "ctr": (0.1, 0.3),
}
DEFAULT_MIN_IMPRESSIONS = 10
#: a session with more searches than this in the events is taken for a bot and dropped
DEFAULT_MAX_SESSION_SEARCHES = 100
#: where several proxy clients searched a query, the most of its counted searches one client
#: may hold (its searches beyond that, the latest first, are dropped): no client outvotes the
#: others together, however many sessions it invents
DEFAULT_MAX_OWNER_SHARE = 0.5

Pair = tuple[str, str]
"""(query text, document id)"""
#: what :func:`count_clicks` reads of an event (who made it weighs as much as what it says)
EVENT_FIELDS = (
    "query_id",
    "action_name",
    "user_query",
    "event_attributes",
    "session_id",
    "client_id",
    "reranker.owner",
)


def normalise_query(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- reading events


def read_events_file(path: Path) -> Iterator[dict[str, Any]]:
    """UBI events from a JSONL file (one event per line, or an Elasticsearch hit with it in
    ``_source``); a line that is not a JSON object is a :class:`MalformedLineError`."""
    try:
        handle = Path(path).open("rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise SourceError(f"{path}: cannot read events: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise MalformedLineError(str(path), number, "not UTF-8") from None
            except json.JSONDecodeError as exc:
                raise MalformedLineError(
                    str(path), number, f"invalid JSON: {exc.msg} (column {exc.colno})"
                ) from None
            if isinstance(row, dict) and isinstance(row.get("_source"), dict):
                row = row["_source"]
            if not isinstance(row, dict):
                raise MalformedLineError(str(path), number, "expected a JSON object (an event)")
            yield row


def read_events_es(
    client: Any, index: str, *, application: str | None = None
) -> Iterator[dict[str, Any]]:
    """The impression and click events of ``index`` (a scroll over all of them)."""
    from elasticsearch import NotFoundError
    from elasticsearch.helpers import scan

    filters: list[dict[str, Any]] = [
        {"terms": {"action_name": [*IMPRESSION_ACTIONS, *CLICK_ACTIONS]}}
    ]
    if application:
        filters.append({"term": {"application": application}})
    try:
        for hit in scan(
            client,
            index=index,
            query={"query": {"bool": {"filter": filters}}},
            size=2000,
            _source_includes=[*EVENT_FIELDS],
        ):
            yield hit["_source"]
    except NotFoundError:
        raise SourceError(
            f"no events index [{index}] (run the proxy with --ubi and post events first)"
        ) from None


# --------------------------------------------------------------------------- sessions → counts


@dataclass
class EventReport:
    """What reading the events found."""

    events: int = 0
    searches: int = 0
    impressions: int = 0
    clicks: int = 0
    clicks_without_impression: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


@dataclass
class ClickCounts:
    """Impressions and clicks per (pair, position)."""

    rows: dict[tuple[Pair, int], list[int]] = field(default_factory=dict)

    def add(self, pair: Pair, position: int, clicked: bool) -> None:
        counts = self.rows.setdefault((pair, position), [0, 0])
        counts[0] += 1
        counts[1] += int(clicked)

    def impressions(self) -> dict[Pair, int]:
        out: dict[Pair, int] = {}
        for (pair, _), (shown, _) in self.rows.items():
            out[pair] = out.get(pair, 0) + shown
        return out

    def clicks(self) -> dict[Pair, int]:
        out: dict[Pair, int] = {}
        for (pair, _), (_, clicked) in self.rows.items():
            out[pair] = out.get(pair, 0) + clicked
        return out

    def by_position(self) -> dict[int, tuple[int, int]]:
        out: dict[int, list[int]] = {}
        for (_, position), (shown, clicked) in self.rows.items():
            counts = out.setdefault(position, [0, 0])
            counts[0] += shown
            counts[1] += clicked
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def _event_fields(event: Mapping[str, Any]) -> tuple[str, str, str, int] | str:
    """(query_id, action, object_id, ordinal), or why the event is skipped."""
    query_id, action = event.get("query_id"), event.get("action_name")
    if not isinstance(query_id, str) or not isinstance(action, str):
        return "no query_id or action_name"
    attributes = event.get("event_attributes")
    obj = attributes.get("object") if isinstance(attributes, dict) else None
    position = attributes.get("position") if isinstance(attributes, dict) else None
    object_id = obj.get("object_id") if isinstance(obj, dict) else None
    ordinal = position.get("ordinal") if isinstance(position, dict) else None
    if isinstance(object_id, int) and not isinstance(object_id, bool):
        object_id = str(object_id)
    if not isinstance(object_id, str) or not isinstance(ordinal, int) or ordinal < 1:
        return "no object_id or position"
    return query_id, action, object_id, ordinal


def _session_of(event: Mapping[str, Any], query_id: str) -> tuple[str, str]:
    """Who made a search: the proxy client (``reranker.owner``, a digest of its API key) and
    the session (``session_id``, else ``client_id``; else the search stands alone)."""
    own = event.get("reranker")
    owner = own.get("owner") if isinstance(own, dict) else None
    session = event.get("session_id") or event.get("client_id")
    return (
        owner if isinstance(owner, str) else "",
        session if isinstance(session, str) else f"search:{query_id}",
    )


def count_clicks(
    events: Iterable[Mapping[str, Any]],
    *,
    max_position: int | None = None,
    max_session_searches: int | None = DEFAULT_MAX_SESSION_SEARCHES,
    max_owner_share: float | None = DEFAULT_MAX_OWNER_SHARE,
) -> tuple[ClickCounts, EventReport]:
    """Per search: the results shown (impressions, and clicks, which imply them) and whether
    each was clicked; summed per (pair, position).

    Each session weighs at most one search per query: its first (a session that searches the
    same words again, or a client replaying one, does not multiply its votes). A session with
    more than ``max_session_searches`` searches is taken for a bot and dropped whole. Where
    several proxy clients (owners) searched a query, none keeps more than ``max_owner_share``
    of its searches (:func:`cap_owner_shares`). All three are counted in the report's
    ``skipped``."""
    report = EventReport()
    shown: dict[str, dict[str, int]] = {}  # query_id → object → position
    clicked: dict[str, set[str]] = {}
    texts: dict[str, str] = {}
    sessions: dict[str, tuple[str, str]] = {}  # query_id → (owner, session)
    for event in events:
        report.events += 1
        fields = _event_fields(event)
        if isinstance(fields, str):
            report.skip(fields)
            continue
        query_id, action, object_id, ordinal = fields
        if action not in CLICK_ACTIONS and action not in IMPRESSION_ACTIONS:
            report.skip(f"action {action}")
            continue
        if max_position is not None and ordinal > max_position:
            report.skip(f"position beyond {max_position}")
            continue
        text = event.get("user_query")
        if isinstance(text, str) and normalise_query(text):
            texts.setdefault(query_id, normalise_query(text))
        sessions.setdefault(query_id, _session_of(event, query_id))
        results = shown.setdefault(query_id, {})
        if action in CLICK_ACTIONS:
            if object_id not in results:
                report.clicks_without_impression += 1
            clicked.setdefault(query_id, set()).add(object_id)
        results.setdefault(object_id, ordinal)
    kept = _one_search_per_session(shown, texts, sessions, max_session_searches, report)
    if max_owner_share is not None:
        kept = cap_owner_shares(kept, max_owner_share, report)
    counts = ClickCounts()
    for query_id, text, _ in kept:
        report.searches += 1
        hits = clicked.get(query_id, set())
        for object_id, position in shown[query_id].items():
            counts.add((text, object_id), position, object_id in hits)
            report.impressions += 1
            report.clicks += int(object_id in hits)
    return counts, report


def _one_search_per_session(
    shown: Mapping[str, Any],
    texts: Mapping[str, str],
    sessions: Mapping[str, tuple[str, str]],
    max_session_searches: int | None,
    report: EventReport,
) -> list[tuple[str, str, str]]:
    """(query id, query text, owner) of the searches that count, in the order first seen."""
    searches_of: dict[tuple[str, str], int] = {}
    for session in sessions.values():
        searches_of[session] = searches_of.get(session, 0) + 1
    counted: set[tuple[str, tuple[str, str]]] = set()  # (query text, session)
    kept: list[tuple[str, str, str]] = []
    for query_id in shown:
        text = texts.get(query_id)
        if text is None:
            report.skip("search without user_query")
            continue
        session = sessions[query_id]
        if max_session_searches is not None and searches_of[session] > max_session_searches:
            report.skip(f"search of a session with over {max_session_searches} searches")
            continue
        if (text, session) in counted:
            report.skip("repeat of a query in one session")
            continue
        counted.add((text, session))
        kept.append((query_id, text, session[0]))
    return kept


def cap_owner_shares(
    searches: Sequence[tuple[str, str, str]], share: float, report: EventReport
) -> list[tuple[str, str, str]]:
    """``searches`` ((query id, text, owner), in order) less each owner's searches beyond its
    cap for that query text: at most ``share / (1 - share)`` times the other owners' searches
    of it together (so at most ``share`` of them), and at least one. ``share`` is at least
    0.5, so only a majority is ever cut and the others are kept whole. A query only one owner
    searched is left whole (its data is all there is; a proxy without keys has one owner)."""
    if not 0.5 <= share < 1.0:
        raise ValueError(f"max_owner_share must be at least 0.5 and below 1, got {share}")
    per_text: dict[str, dict[str, int]] = {}
    for _, text, owner in searches:
        owners = per_text.setdefault(text, {})
        owners[owner] = owners.get(owner, 0) + 1
    taken: dict[tuple[str, str], int] = {}
    kept: list[tuple[str, str, str]] = []
    for search in searches:
        _, text, owner = search
        owners = per_text[text]
        if len(owners) > 1:
            others = sum(owners.values()) - owners[owner]
            cap = max(1, math.floor(share / (1.0 - share) * others + 1e-9))
            if taken.get((text, owner), 0) >= cap:
                report.skip(f"searches of one client beyond {share:g} of a query's")
                continue
        taken[(text, owner)] = taken.get((text, owner), 0) + 1
        kept.append(search)
    return kept


def require_impressions(counts: ClickCounts, report: EventReport) -> None:
    """A :class:`SourceError` when the events hold nothing a click model could use."""
    if counts.rows:
        return
    skipped = ", ".join(f"{why}: {n}" for why, n in report.skipped.items()) or "none"
    raise SourceError(
        f"no impressions or clicks to judge in {report.events} events (skipped: {skipped}): "
        "nothing written"
    )


# --------------------------------------------------------------------------- click models


@dataclass
class ModelFit:
    """A click model's score per pair, and what it learnt per position."""

    model: str
    scores: dict[Pair, float]
    positions: dict[int, float]
    """``ctr_k`` (coec, ctr) or ``θ_k`` (pbm), by position."""
    iterations: int = 0
    converged: bool = True
    examinations: dict[Pair, float] | None = None
    """pbm: a pair's expected examinations, ``Σ θ_k`` over its impressions."""


def _arrays(
    counts: ClickCounts,
) -> tuple[list[Pair], list[int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pairs = sorted({pair for pair, _ in counts.rows})
    positions = sorted({position for _, position in counts.rows})
    pair_index = {pair: i for i, pair in enumerate(pairs)}
    position_index = {position: i for i, position in enumerate(positions)}
    keys = list(counts.rows)
    p = np.array([pair_index[pair] for pair, _ in keys], dtype=np.int64)
    k = np.array([position_index[position] for _, position in keys], dtype=np.int64)
    n = np.array([counts.rows[key][0] for key in keys], dtype=np.float64)
    c = np.array([counts.rows[key][1] for key in keys], dtype=np.float64)
    return pairs, positions, p, k, n, c


def fit_ctr(counts: ClickCounts) -> ModelFit:
    pairs, positions, p, k, n, c = _arrays(counts)
    shown = np.bincount(p, n, len(pairs))
    hits = np.bincount(p, c, len(pairs))
    by_position = np.bincount(k, c, len(positions)) / np.bincount(k, n, len(positions))
    return ModelFit(
        "ctr",
        {pair: float(hits[i] / shown[i]) for i, pair in enumerate(pairs)},
        {pos: float(by_position[i]) for i, pos in enumerate(positions)},
    )


def fit_coec(counts: ClickCounts) -> ModelFit:
    pairs, positions, p, k, n, c = _arrays(counts)
    ctr_k = np.bincount(k, c, len(positions)) / np.bincount(k, n, len(positions))
    expected = np.bincount(p, n * ctr_k[k], len(pairs))
    hits = np.bincount(p, c, len(pairs))
    scores = np.divide(hits, expected, out=np.zeros_like(hits), where=expected > 0)
    return ModelFit(
        "coec",
        {pair: float(scores[i]) for i, pair in enumerate(pairs)},
        {pos: float(ctr_k[i]) for i, pos in enumerate(positions)},
    )


def fit_pbm(
    counts: ClickCounts,
    *,
    iterations: int = 1000,
    tol: float = 1e-9,
    prior_strength: float = 2.0,
    prior_mean: float | None = None,
) -> ModelFit:
    """The position-based model by EM (see the module's docstring)."""
    if prior_strength < 0 or (prior_mean is not None and not 0 <= prior_mean <= 1):
        raise ConfigError("the prior's strength must be ≥ 0 and its mean within [0, 1]")
    pairs, positions, p, k, n, c = _arrays(counts)
    mean = 0.5 if prior_mean is None else prior_mean
    alpha = np.full(len(pairs), 0.5)
    theta = np.full(len(positions), 0.5)
    shown_pair = np.bincount(p, n, len(pairs))
    shown_position = np.bincount(k, n, len(positions))
    misses = n - c
    done = 0
    converged = False
    before = -math.inf
    for done in range(1, iterations + 1):  # noqa: B007 - the count is reported
        a, t = alpha[p], theta[k]
        unclicked = np.maximum(1.0 - t * a, 1e-12)
        attractive = c + misses * (1.0 - t) * a / unclicked
        examined = c + misses * t * (1.0 - a) / unclicked
        if prior_mean is None:  # empirical Bayes: the mean attractiveness of an impression
            mean = float(np.sum(attractive) / np.sum(n))
        alpha = (np.bincount(p, attractive, len(pairs)) + prior_strength * mean) / (
            shown_pair + prior_strength
        )
        theta = np.bincount(k, examined, len(positions)) / shown_position
        likelihood = _pbm_log_likelihood(alpha[p] * theta[k], n, c)
        # EM never lowers the likelihood; along the θ·α ridge it barely moves: stop there
        if likelihood - before <= tol * abs(likelihood):
            converged = True
            break
        before = likelihood
    top = theta[0] if theta[0] > 0 else 1.0
    theta = np.minimum(theta / top, 1.0)
    alpha = np.minimum(alpha * top, 1.0)
    examined_pair = np.bincount(p, n * theta[k], len(pairs))
    return ModelFit(
        "pbm",
        {pair: float(alpha[i]) for i, pair in enumerate(pairs)},
        {pos: float(theta[i]) for i, pos in enumerate(positions)},
        iterations=done,
        converged=converged,
        examinations={pair: float(examined_pair[i]) for i, pair in enumerate(pairs)},
    )


def _pbm_log_likelihood(click: np.ndarray, n: np.ndarray, c: np.ndarray) -> float:
    click = np.clip(click, 1e-12, 1.0 - 1e-12)
    return float(np.sum(c * np.log(click) + (n - c) * np.log1p(-click)))


def fit(model: str, counts: ClickCounts, **options: Any) -> ModelFit:
    if model == "pbm":
        return fit_pbm(counts, **options)
    if model == "coec":
        return fit_coec(counts)
    if model == "ctr":
        return fit_ctr(counts)
    raise ConfigError(f"unknown click model {model!r}; choose one of {', '.join(MODELS)}")


# --------------------------------------------------------------------------- judgments


def grade(score: float, thresholds: Sequence[float]) -> int:
    return sum(1 for t in thresholds if score >= t)


def parse_thresholds(raw: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--thresholds {raw!r}: expected numbers separated by commas") from None
    if not values or any(not math.isfinite(v) for v in values) or list(values) != sorted(values):
        raise ConfigError(f"--thresholds {raw!r}: expected increasing finite numbers")
    return values


@dataclass
class Judgments:
    """Graded pairs by query id, with the model's scores and impressions behind them."""

    qrels: Qrels
    scores: dict[str, dict[str, float]]
    impressions: dict[str, dict[str, int]]
    pairs_seen: int
    pairs_kept: int
    unmatched_queries: list[str]


def query_ids_for(
    texts: Iterable[str], dataset_queries: Mapping[str, str] | None
) -> tuple[dict[str, str], list[str]]:
    """Each query text's id: the dataset's (the first query with that text), or ``ubi-`` and
    a digest of the text without a dataset; and the texts the dataset does not have."""
    if dataset_queries is None:
        return {t: "ubi-" + hashlib.sha1(t.encode()).hexdigest()[:12] for t in texts}, []
    by_text: dict[str, str] = {}
    for query_id, text in dataset_queries.items():
        by_text.setdefault(normalise_query(text), query_id)
    ids: dict[str, str] = {}
    unmatched: list[str] = []
    for text in texts:
        if text in by_text:
            ids[text] = by_text[text]
        else:
            unmatched.append(text)
    return ids, unmatched


def judge(
    counts: ClickCounts,
    model_fit: ModelFit,
    *,
    min_impressions: int,
    thresholds: Sequence[float],
    dataset_queries: Mapping[str, str] | None = None,
    min_examinations: float = 0.0,
) -> Judgments:
    """Grade the pairs with at least ``min_impressions`` impressions (and, for pbm, at least
    ``min_examinations`` expected examinations); a :class:`SourceError` when none has."""
    if min_impressions < 1:
        raise ConfigError("--min-impressions must be at least 1")
    if min_examinations > 0 and model_fit.examinations is None:
        raise ConfigError("--min-examinations needs the pbm model (it knows examination)")
    impressions = counts.impressions()
    if not impressions:
        raise SourceError("no impressions in the events: nothing to judge")
    kept = {pair: shown for pair, shown in impressions.items() if shown >= min_impressions}
    if not kept:
        most = max(impressions.values())
        raise SourceError(
            f"no (query, document) pair has {min_impressions} impressions (the most any has is "
            f"{most}, over {len(impressions)} pairs): nothing written; lower --min-impressions "
            "or collect more events"
        )
    examined = model_fit.examinations
    if min_examinations > 0 and examined is not None:
        kept = {pair: shown for pair, shown in kept.items() if examined[pair] >= min_examinations}
        if not kept:
            raise SourceError(
                f"no (query, document) pair with {min_impressions} impressions was examined "
                f"{min_examinations:g} times by the model's estimate (the most is "
                f"{max(examined.values()):.1f}): nothing written; lower --min-examinations"
            )
    ids, unmatched = query_ids_for(sorted({text for text, _ in kept}), dataset_queries)
    qrels: Qrels = {}
    scores: dict[str, dict[str, float]] = {}
    shown_by_id: dict[str, dict[str, int]] = {}
    for (text, doc_id), shown in sorted(kept.items()):
        query_id = ids.get(text)
        if query_id is None:
            continue
        score = model_fit.scores[(text, doc_id)]
        qrels.setdefault(query_id, {})[doc_id] = grade(score, thresholds)
        scores.setdefault(query_id, {})[doc_id] = score
        shown_by_id.setdefault(query_id, {})[doc_id] = shown
    if not qrels:
        raise SourceError(
            f"none of the {len(unmatched)} judged queries is in the dataset's queries.jsonl "
            f"(e.g. {unmatched[0][:80]!r}): nothing written"
        )
    return Judgments(
        qrels=qrels,
        scores=scores,
        impressions=shown_by_id,
        pairs_seen=len(impressions),
        pairs_kept=sum(len(d) for d in qrels.values()),
        unmatched_queries=unmatched,
    )


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` whole, or nothing (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def qrels_text(qrels: Qrels) -> str:
    lines = ["query-id\tcorpus-id\tscore"]
    for query_id in sorted(qrels):
        for doc_id, value in sorted(qrels[query_id].items()):
            lines.append(f"{query_id}\t{doc_id}\t{value}")
    return "\n".join(lines) + "\n"


def queries_text(ids: Mapping[str, str]) -> str:
    """``queries.jsonl`` lines for {query text: id}."""
    rows = sorted((query_id, text) for text, query_id in ids.items())
    return "".join(json.dumps({"_id": q, "text": t}, ensure_ascii=False) + "\n" for q, t in rows)
