"""Index bodies from ``es_mappings/``, analyser choice by what the cluster offers, and aliases."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from elasticsearch import BadRequestError, Elasticsearch, NotFoundError

from reranker.errors import IndexingError
from reranker.retrieval.queries import RESCORE_VECTOR_FIELD

#: ``es_mappings/``, installed with the package (a checkout's own folder in an editable install)
MAPPINGS_DIR = Path(str(files("es_mappings")))


@cache
def load_mapping_file(name: str) -> dict[str, Any]:
    path = MAPPINGS_DIR / name
    with path.open(encoding="utf-8") as handle:
        body: dict[str, Any] = json.load(handle)
    body.pop("_comment", None)
    return body


def supported_token_filters(client: Elasticsearch, names: list[str]) -> dict[str, bool]:
    """Which token filters the cluster knows, asked one by one through ``_analyze``."""
    found: dict[str, bool] = {}
    for name in names:
        spec: dict[str, Any] = (
            {"type": "stemmer", "language": "possessive_english"}
            if (name == "english_possessive")
            else {"type": name}
        )
        try:
            client.indices.analyze(tokenizer="standard", filter=[spec], text="Dogs' running")
            found[name] = True
        except BadRequestError:
            found[name] = False
    return found


def choose_analysis(client: Elasticsearch) -> tuple[str, dict[str, Any]]:
    """The best analyser the cluster supports: ``stemmed`` where analysis-common exists."""
    options = load_mapping_file("analyzers.json")
    for name in ("stemmed", "core"):
        option = options[name]
        required: list[str] = option["requires"]
        if all(supported_token_filters(client, required).values()):
            return name, copy.deepcopy(option["analysis"])
    raise IndexingError("the cluster supports none of the analysers in es_mappings/analyzers.json")


def documents_index_body(
    *,
    analysis_name: str,
    analysis: dict[str, Any],
    dims: int,
    meta: dict[str, Any],
    shards: int | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """Settings and mappings for a new documents index, with the load-time settings applied;
    ``shards`` and ``replicas`` override the template's counts when given."""
    body = copy.deepcopy(load_mapping_file("docs.json"))
    body["settings"]["index"]["analysis"] = analysis
    if shards is not None:
        body["settings"]["index"]["number_of_shards"] = shards
    if replicas is not None:
        body["settings"]["index"]["number_of_replicas"] = replicas
    # Refresh off during the bulk load; turned back on before the count check.
    body["settings"]["index"]["refresh_interval"] = "-1"
    body["mappings"]["properties"]["embedding"]["dims"] = dims
    if meta.get("embedder"):
        # field metadata comes back in field caps, which a read-only client may call: the
        # proxy compares it with the embedder it would query with
        body["mappings"]["properties"]["embedding"]["meta"] = {
            EMBEDDER_META_KEY: embedder_stamp(str(meta["embedder"]))
        }
    if meta.get(RESCORE_META_KEY):
        # the second embedder's vectors are read for the reranking window, never searched:
        # no HNSW graph to build
        body["mappings"]["properties"][RESCORE_VECTOR_FIELD] = {
            "type": "dense_vector",
            "dims": int(meta["rescore_dims"]),
            "index": False,
            "meta": {EMBEDDER_META_KEY: embedder_stamp(str(meta[RESCORE_META_KEY]))},
        }
    if meta.get(PASSAGES_META_KEY):
        # the index's own default for long documents, read back the same way (field caps)
        body["mappings"]["properties"]["text"]["meta"] = {
            PASSAGES_META_KEY: str(meta[PASSAGES_META_KEY])
        }
    body["mappings"]["_meta"] = {"reranker": {**meta, "analyzer": analysis_name}}
    return body


#: the key of the embedder's id in the ``embedding`` field's mapping metadata
EMBEDDER_META_KEY = "embedder"
#: the key of the second embedder's id in an index's ``_meta`` (its vectors:
#: :data:`~reranker.retrieval.queries.RESCORE_VECTOR_FIELD`)
RESCORE_META_KEY = "rescore_embedder"
#: the key of the index's passage combination (``max``, ``firstmax``) in its ``_meta`` and in
#: the ``text`` field's mapping metadata: long documents are scored by passages by default
PASSAGES_META_KEY = "passages"
#: Elasticsearch's limit on a field metadata value's length
FIELD_META_MAX = 50


def embedder_stamp(model_id: str) -> str:
    """An embedder's id as the ``embedding`` field's metadata holds it: field metadata
    values are at most 50 characters, so a longer id keeps its tail (the weights' hash and
    the variant, which tell embedding spaces apart)."""
    return model_id if len(model_id) <= FIELD_META_MAX else model_id[-FIELD_META_MAX:]


def versioned_index_name(client: Elasticsearch, alias: str, now: datetime | None = None) -> str:
    """``<alias>-<yyyymmddhhmmss>``, with a counter if that name is taken already."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    name = f"{alias}-{stamp}"
    counter = 1
    while client.indices.exists(index=name):
        counter += 1
        name = f"{alias}-{stamp}-{counter}"
    return name


def validate_alias_name(alias: str) -> None:
    if not alias or alias != alias.lower() or alias.startswith(("_", "-", "+")):
        raise IndexingError(f"alias {alias!r} must be lower-case and not start with _, - or +")
    if any(ch in alias for ch in ' "*\\<|,>/?#:'):
        raise IndexingError(f"alias {alias!r} contains a character Elasticsearch forbids")


def indices_behind_alias(client: Elasticsearch, alias: str) -> list[str]:
    """Concrete indices the alias points at; [] if it does not exist.

    Raises :class:`IndexingError` if the name is a concrete index rather than an alias, since
    swapping would then need a destructive delete first.
    """
    try:
        found = client.indices.get_alias(name=alias)
    except NotFoundError:
        if client.indices.exists(index=alias):
            raise IndexingError(
                f"{alias!r} is an index, not an alias; choose another alias name"
            ) from None
        return []
    return sorted(found.keys())


def index_meta(client: Elasticsearch, index: str) -> dict[str, Any]:
    """``_meta.reranker`` of an index (or of the one index behind an alias)."""
    mapping = client.indices.get_mapping(index=index)
    for body in mapping.values():
        meta: dict[str, Any] = body["mappings"].get("_meta", {}).get("reranker", {})
        return meta
    return {}


def swap_alias(client: Elasticsearch, alias: str, new_index: str, old_indices: list[str]) -> None:
    """Point the alias at ``new_index`` and away from ``old_indices`` in one atomic request."""
    actions: list[dict[str, Any]] = [
        {"remove": {"index": old, "alias": alias}} for old in old_indices
    ]
    actions.append({"add": {"index": new_index, "alias": alias, "is_write_index": True}})
    client.indices.update_aliases(actions=actions)
