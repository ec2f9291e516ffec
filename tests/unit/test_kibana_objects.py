"""The Kibana saved objects: parse, resolve their references, and name mapped fields only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ES_MAPPINGS = Path(__file__).resolve().parents[2] / "es_mappings"


def saved_objects() -> list[dict[str, Any]]:
    lines = (ES_MAPPINGS / "kibana" / "reranker.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in lines.splitlines() if line.strip()]


def mapped_fields(properties: dict[str, Any], prefix: str = "") -> set[str]:
    fields: set[str] = set()
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        if "properties" in spec:
            fields |= mapped_fields(spec["properties"], f"{path}.")
        else:
            fields.add(path)
    return fields


def test_there_is_a_data_view_a_saved_search_and_a_dashboard() -> None:
    kinds = {obj["type"] for obj in saved_objects()}
    assert {"index-pattern", "search", "dashboard"} <= kinds


def test_every_reference_points_at_an_object_in_the_file() -> None:
    objects = saved_objects()
    known = {(obj["type"], obj["id"]) for obj in objects}
    for obj in objects:
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in known, (obj["id"], ref)


#: each data view's template (the file that maps what it shows)
TEMPLATES = {
    "reranker-logs": "logs-template.json",
    "reranker-ubi-events": "ubi-events-template.json",
    "reranker-ubi-queries": "ubi-queries-template.json",
}


def template_fields(view_id: str) -> tuple[list[str], set[str]]:
    name = TEMPLATES[view_id]
    template = json.loads((ES_MAPPINGS / name).read_text(encoding="utf-8"))
    return template["index_patterns"], mapped_fields(template["template"]["mappings"]["properties"])


def test_every_data_view_matches_its_template_and_its_time_field() -> None:
    views = [obj for obj in saved_objects() if obj["type"] == "index-pattern"]
    assert {view["id"] for view in views} == set(TEMPLATES)
    for view in views:
        patterns, fields = template_fields(view["id"])
        assert view["attributes"]["title"] in patterns, view["id"]
        assert view["attributes"]["timeFieldName"] in fields, view["id"]


def test_there_is_a_data_view_and_a_saved_search_for_ubi_events() -> None:
    objects = {obj["id"]: obj for obj in saved_objects()}
    assert objects["reranker-ubi-events"]["attributes"]["title"] == "ubi_events"
    refs = objects["reranker-ubi-clicks"]["references"]
    assert [ref["id"] for ref in refs] == ["reranker-ubi-events"]


def test_saved_search_columns_are_mapped_fields() -> None:
    for obj in saved_objects():
        if obj["type"] == "search":
            (view,) = [ref["id"] for ref in obj["references"] if ref["type"] == "index-pattern"]
            _, fields = template_fields(view)
            missing = [c for c in obj["attributes"]["columns"] if c not in fields]
            assert not missing, (obj["id"], missing)
