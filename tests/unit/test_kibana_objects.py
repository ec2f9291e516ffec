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


def test_the_data_view_matches_the_log_template_and_its_time_field() -> None:
    template = json.loads((ES_MAPPINGS / "logs-template.json").read_text(encoding="utf-8"))
    view = next(obj for obj in saved_objects() if obj["type"] == "index-pattern")
    assert view["attributes"]["title"] in template["index_patterns"]
    fields = mapped_fields(template["template"]["mappings"]["properties"])
    assert view["attributes"]["timeFieldName"] in fields


def test_saved_search_columns_are_mapped_fields() -> None:
    template = json.loads((ES_MAPPINGS / "logs-template.json").read_text(encoding="utf-8"))
    fields = mapped_fields(template["template"]["mappings"]["properties"])
    for obj in saved_objects():
        if obj["type"] == "search":
            missing = [c for c in obj["attributes"]["columns"] if c not in fields]
            assert not missing, (obj["id"], missing)
