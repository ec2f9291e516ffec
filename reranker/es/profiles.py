"""Personalisation profiles, kept in Elasticsearch and updated from ``ubi_events``.

A profile belongs to one user of one proxy client on one index: ``(owner, subject, index)``,
where ``owner`` is the digest of the proxy API key that made the searches (empty on a proxy
without keys), ``subject`` the user the search named (``ext.ubi.user_id``, else
``client_id``) and ``index`` the index expression searched. It holds the exponentially
decayed sum of the embeddings of the documents that user clicked (half-life
``half_life_days``) and the sum of the weights, so its direction is the decayed mean: a fixed
size whatever the number of clicks.

:func:`update_profiles` reads the click events the proxy accepted since the last run (by the
time the proxy received them, ``reranker.received``, kept in a checkpoint document), fetches
the clicked documents' stored embeddings from their index and folds them in; it deletes the
profiles not updated within ``retention_days``, and ignores events older than that. The
profile is credited to the user *of the search the click belongs to* (stamped by the proxy
when it accepted the event), never to an id the event itself claims.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from reranker.es.mappings import load_mapping_file
from reranker.feedback.judgments import CLICK_ACTIONS
from reranker.feedback.ubi import ubi_timestamp
from reranker.retrieval.queries import read_vectors, vectors_query

DEFAULT_PROFILES_INDEX = "reranker-profiles"
DEFAULT_HALF_LIFE_DAYS = 30.0
DEFAULT_RETENTION_DAYS = 180.0
#: events received this recently are left for the next run (the proxy's write queue and the
#: index's refresh may still hold some received before them)
SETTLE_S = 5.0
PROFILE_KIND = "profile"
CHECKPOINT_ID = "checkpoint"
#: clicked documents whose embeddings are fetched in one search
VECTOR_BATCH = 500


def profile_id(owner: str | None, subject: str, index: str) -> str:
    """The profile document's ``_id``: a digest of who and where (ids never carry names)."""
    key = "\x00".join((owner or "", subject, index))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def owner_subject_filter(owner: str | None, subject: str) -> dict[str, Any]:
    """The query that selects one user's profiles (every index) under one proxy client."""
    return {
        "bool": {
            "filter": [
                {"term": {"kind": PROFILE_KIND}},
                {"term": {"owner": owner or ""}},
                {"term": {"subject": subject}},
            ]
        }
    }


def decay(age: timedelta, half_life_days: float) -> float:
    """The weight left after ``age`` (a negative age counts as none)."""
    days = max(0.0, age.total_seconds() / 86_400)
    return math.pow(0.5, days / half_life_days)


@dataclass
class Profile:
    """One user's clicks as a decayed sum of embeddings (see the module's docstring)."""

    owner: str
    subject: str
    index: str
    vector_sum: np.ndarray
    weight: float
    clicks: int
    as_of: datetime

    @property
    def id(self) -> str:
        return profile_id(self.owner, self.subject, self.index)

    def direction(self) -> tuple[float, ...] | None:
        """The decayed mean of the clicked embeddings (``None`` when nothing is left)."""
        if self.weight <= 0 or not np.isfinite(self.vector_sum).all():
            return None
        mean = self.vector_sum / self.weight
        return tuple(float(x) for x in mean) if np.linalg.norm(mean) > 0 else None

    def add(self, clicks: Iterable[tuple[datetime, np.ndarray]], half_life_days: float) -> Profile:
        """This profile with ``clicks`` ((when, embedding)) folded in, as of the latest of
        its time and theirs."""
        items = list(clicks)
        latest = max([self.as_of, *(when for when, _ in items)])
        total = self.vector_sum * decay(latest - self.as_of, half_life_days)
        weight = self.weight * decay(latest - self.as_of, half_life_days)
        for when, vector in items:
            share = decay(latest - when, half_life_days)
            total = total + share * np.asarray(vector, dtype=np.float64)
            weight += share
        return Profile(
            self.owner, self.subject, self.index, total, weight, self.clicks + len(items), latest
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "kind": PROFILE_KIND,
            "owner": self.owner,
            "subject": self.subject,
            "index": self.index,
            "vector_sum": [float(x) for x in self.vector_sum],
            "weight": self.weight,
            "clicks": self.clicks,
            "as_of": ubi_timestamp(self.as_of),
        }


def profile_from_document(source: Mapping[str, Any]) -> Profile | None:
    """A stored profile; ``None`` when the document is not a readable one."""
    try:
        when = datetime.fromisoformat(str(source["as_of"]).replace("Z", "+00:00"))
        vector = np.asarray(source["vector_sum"], dtype=np.float64).reshape(-1)
        return Profile(
            owner=str(source["owner"]),
            subject=str(source["subject"]),
            index=str(source["index"]),
            vector_sum=vector,
            weight=float(source["weight"]),
            clicks=int(source["clicks"]),
            as_of=when if when.tzinfo else when.replace(tzinfo=UTC),
        )
    except (KeyError, TypeError, ValueError):
        return None


def empty_profile(owner: str, subject: str, index: str, dims: int, when: datetime) -> Profile:
    return Profile(owner, subject, index, np.zeros(dims), 0.0, 0, when)


def profiles_template(index: str) -> dict[str, Any]:
    template = copy.deepcopy(load_mapping_file("profiles-template.json"))
    template["index_patterns"] = [index]
    return template


# --------------------------------------------------------------------------- the update job


@dataclass
class ProfileUpdate:
    """What one :func:`update_profiles` run did."""

    clicks_read: int = 0
    clicks_used: int = 0
    clicks_without_vector: int = 0
    profiles_updated: int = 0
    profiles_expired: int = 0
    received_through: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


Click = tuple[datetime, str]  # (when, clicked document id)
Key = tuple[str, str, str]  # (owner, subject, index)


#: most profiles one delete removes (ids are read first: Elasticsearch's _delete_by_query lives
#: in a module the embedded node does not have)
MAX_DELETE = 10_000


def delete_where(client: Any, index: str, query: dict[str, Any]) -> int:
    """Delete the documents of ``index`` that ``query`` selects (at most :data:`MAX_DELETE`);
    how many were deleted. A missing index holds none."""
    from elasticsearch import NotFoundError

    try:
        found = client.search(index=index, query=query, size=MAX_DELETE, source=False)
    except NotFoundError:
        return 0
    operations = delete_operations(index, found)
    return deleted(client.bulk(operations=operations, refresh=True)) if operations else 0


def delete_operations(index: str, found: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bulk operations that delete the hits of a search answer."""
    hits = (found.get("hits") or {}).get("hits", [])
    return [{"delete": {"_index": index, "_id": hit["_id"]}} for hit in hits]


def deleted(answer: Mapping[str, Any]) -> int:
    """How many documents a bulk of deletes removed."""
    return sum(1 for item in answer["items"] if item["delete"].get("result") == "deleted")


def ensure_profiles_index(client: Any, index: str) -> None:
    """The template and the (hidden) index, created if missing."""
    client.indices.put_index_template(name=index, **profiles_template(index))
    if not client.indices.exists(index=index):
        client.indices.create(index=index)


def read_checkpoint(client: Any, index: str) -> str | None:
    from elasticsearch import NotFoundError

    try:
        answer = client.get(index=index, id=CHECKPOINT_ID)
    except NotFoundError:
        return None
    value = (answer.get("_source") or {}).get("received_through")
    return str(value) if value else None


def update_profiles(
    client: Any,
    *,
    events_index: str = "ubi_events",
    profiles_index: str = DEFAULT_PROFILES_INDEX,
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
    retention_days: float = DEFAULT_RETENTION_DAYS,
    now: datetime | None = None,
    settle_s: float = SETTLE_S,
) -> ProfileUpdate:
    """Fold the click events received since the last run into their users' profiles, delete
    the expired ones and move the checkpoint (see the module's docstring)."""
    if half_life_days <= 0 or retention_days <= 0:
        raise ValueError("the half-life and the retention must be positive")
    now = now or datetime.now(UTC)
    ensure_profiles_index(client, profiles_index)
    report = ProfileUpdate()
    since = read_checkpoint(client, profiles_index)
    through = ubi_timestamp(now - timedelta(seconds=settle_s))
    oldest = now - timedelta(days=retention_days)
    clicks = _read_clicks(client, events_index, since, through, oldest, report)
    for index, keys in _by_index(clicks).items():
        vectors = _vectors(client, index, {doc for key in keys for _, doc in clicks[key]})
        _fold(client, profiles_index, {k: clicks[k] for k in keys}, vectors, half_life_days,
              report)  # fmt: skip
    report.profiles_expired = delete_where(
        client,
        profiles_index,
        {"bool": {"filter": [{"term": {"kind": PROFILE_KIND}},
                             {"range": {"as_of": {"lt": ubi_timestamp(oldest)}}}]}},
    )  # fmt: skip
    client.index(
        index=profiles_index,
        id=CHECKPOINT_ID,
        document={"kind": "checkpoint", "received_through": through},
        refresh=True,
    )
    report.received_through = through
    return report


def _read_clicks(
    client: Any,
    events_index: str,
    since: str | None,
    through: str,
    oldest: datetime,
    report: ProfileUpdate,
) -> dict[Key, list[Click]]:
    """The clicks received after ``since`` up to ``through``, by profile."""
    from elasticsearch import NotFoundError
    from elasticsearch.helpers import scan

    received: dict[str, str] = {"lte": through}
    if since is not None:
        received["gt"] = since
    query = {
        "bool": {
            "filter": [
                {"terms": {"action_name": list(CLICK_ACTIONS)}},
                {"exists": {"field": "reranker.subject"}},
                {"range": {"reranker.received": received}},
                {"range": {"timestamp": {"gte": ubi_timestamp(oldest)}}},
            ]
        }
    }
    out: dict[Key, list[Click]] = defaultdict(list)
    try:
        client.indices.refresh(index=events_index)
        hits = scan(client, index=events_index, query={"query": query}, size=2000)
        for hit in hits:
            report.clicks_read += 1
            parsed = _click_of(hit.get("_source") or {})
            if isinstance(parsed, str):
                report.skip(parsed)
                continue
            key, click = parsed
            out[key].append(click)
    except NotFoundError:
        return {}
    return dict(out)


def _click_of(source: Mapping[str, Any]) -> tuple[Key, Click] | str:
    own = source.get("reranker") or {}
    try:
        doc_id = source["event_attributes"]["object"]["object_id"]
        when = datetime.fromisoformat(str(source["timestamp"]).replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError):
        return "unreadable event"
    subject, index = own.get("subject"), own.get("index")
    if not isinstance(subject, str) or not isinstance(index, str) or not doc_id:
        return "no user or index"
    owner = own.get("owner")
    key = (owner if isinstance(owner, str) else "", subject, index)
    return key, (when if when.tzinfo else when.replace(tzinfo=UTC), str(doc_id))


def _by_index(clicks: Mapping[Key, list[Click]]) -> dict[str, list[Key]]:
    grouped: dict[str, list[Key]] = defaultdict(list)
    for key in clicks:
        grouped[key[2]].append(key)
    return dict(grouped)


def _vectors(client: Any, index: str, doc_ids: set[str]) -> dict[str, np.ndarray]:
    """The stored embeddings of ``doc_ids`` in ``index`` (with the job's own credentials;
    missing documents or an index without embeddings give none)."""
    from elasticsearch import ApiError

    found: dict[str, np.ndarray] = {}
    ids = sorted(doc_ids)
    for start in range(0, len(ids), VECTOR_BATCH):
        body = vectors_query((None, doc) for doc in ids[start : start + VECTOR_BATCH])
        try:
            answer = client.search(index=index, **body)
        except ApiError:
            return found
        for (_, doc), vector in read_vectors(answer).items():
            found[doc] = np.asarray(vector, dtype=np.float64)
    return found


def _fold(
    client: Any,
    profiles_index: str,
    clicks: Mapping[Key, list[Click]],
    vectors: Mapping[str, np.ndarray],
    half_life_days: float,
    report: ProfileUpdate,
) -> None:
    """Read the profiles of ``clicks``' users, fold their clicks in, write them back."""
    from elasticsearch.helpers import bulk

    ids = {key: profile_id(*key) for key in clicks}
    stored = client.mget(index=profiles_index, ids=list(ids.values()))
    by_id = {
        d["_id"]: profile_from_document(d["_source"]) for d in stored["docs"] if d.get("found")
    }
    actions = []
    for key, items in clicks.items():
        usable = [(when, vectors[doc]) for when, doc in items if doc in vectors]
        report.clicks_without_vector += len(items) - len(usable)
        if not usable:
            continue
        dims = len(usable[0][1])
        usable = [(when, v) for when, v in usable if len(v) == dims]
        profile = by_id.get(ids[key])
        if profile is None or len(profile.vector_sum) != dims:
            profile = empty_profile(*key, dims=dims, when=min(when for when, _ in usable))
        profile = profile.add(usable, half_life_days)
        report.clicks_used += len(usable)
        report.profiles_updated += 1
        actions.append(
            {"_index": profiles_index, "_id": ids[key], "_source": profile.to_document()}
        )
    if actions:
        bulk(client, actions, refresh=True)
