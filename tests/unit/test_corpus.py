"""Reading sources: documents, malformed lines, qrels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reranker.corpus import (
    DEV_HOLDOUT_FRACTION,
    DEV_HOLDOUT_SEED,
    CorpusSource,
    load_qrels,
    parse_document,
    passage_text,
    read_jsonl,
    split_queries,
)
from reranker.errors import MalformedLineError, SourceError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_parse_document_accepts_numeric_id_and_missing_title() -> None:
    doc = parse_document(json.dumps({"id": 7, "text": "body"}))
    assert doc == {"_id": "7", "title": "", "text": "body"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"text": "x"}), "_id"),
        (json.dumps({"_id": "a"}), "missing text"),
        (json.dumps({"_id": "a", "title": " ", "text": ""}), "both empty"),
    ],
)
def test_parse_document_says_what_is_wrong(line: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_document(line)


def test_malformed_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "docs.jsonl",
        [json.dumps({"_id": "1", "text": "a"}), "", json.dumps({"_id": "2"})],
    )
    source = CorpusSource.open(path)
    with pytest.raises(MalformedLineError) as caught:
        source.count()
    assert caught.value.line_number == 3
    assert "docs.jsonl:3" in str(caught.value)


def test_read_jsonl_numbers_objects_and_names_bad_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rows.jsonl", ['{"a": 1}', "", '{"b": 2}'])
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"b": 2})]
    write_lines(path, ['{"a": 1}', "[1, 2]"])
    with pytest.raises(MalformedLineError, match=r"rows.jsonl:2: expected a JSON object"):
        list(read_jsonl(path))
    path.write_bytes(b"{not json\n")
    with pytest.raises(MalformedLineError, match=r"rows.jsonl:1: invalid JSON"):
        list(read_jsonl(path))
    with pytest.raises(SourceError, match="cannot read"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_skip_malformed_reports_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"_id": "1", "text": "a"}\n\xff\xfe broken\n{"_id": "3", "text": "c"}\n')
    report = CorpusSource.open(path).count(skip_malformed=True)
    assert report.documents == 2
    assert [e.line_number for e in report.skipped] == [2]
    assert "UTF-8" in report.skipped[0].reason


def test_duplicate_ids_are_malformed(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "d.jsonl",
        [json.dumps({"_id": "1", "text": "a"}), json.dumps({"_id": "1", "text": "b"})],
    )
    with pytest.raises(MalformedLineError, match="duplicate"):
        CorpusSource.open(path).count()


def test_extra_fields_are_joined_on_id(tmp_path: Path) -> None:
    corpus = write_lines(tmp_path / "c.jsonl", [json.dumps({"_id": "1", "text": "a"})])
    extra = write_lines(tmp_path / "s.jsonl", [json.dumps({"_id": "1", "signals": {"year": 2001}})])
    docs = list(CorpusSource.open(corpus, extra=(extra,)).documents())
    assert docs[0]["signals"] == {"year": 2001}


def test_missing_source_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        CorpusSource.open(tmp_path / "nope.jsonl")


def test_folder_without_corpus_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"corpus\.jsonl"):
        CorpusSource.open(tmp_path)


def test_missing_split_names_the_available_ones(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    write_lines(tmp_path / "qrels" / "train.tsv", ["query-id\tcorpus-id\tscore", "q\td\t1"])
    with pytest.raises(SourceError, match="splits available: train"):
        load_qrels(tmp_path, "test")


def test_held_out_queries_are_a_stable_fraction() -> None:
    qrels = {f"q{i}": {"d": 1} for i in range(1000)}
    rest, held = split_queries(qrels, 0.2, seed=13)
    assert set(rest).isdisjoint(held) and len(rest) + len(held) == 1000
    assert 150 < len(held) < 250
    assert split_queries(qrels, 0.2, seed=13)[1] == held


def test_dev_of_a_dataset_without_one_is_the_held_out_part_of_train(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    rows = [f"q{i}\td{i}\t1" for i in range(200)]
    write_lines(tmp_path / "qrels" / "train.tsv", ["query-id\tcorpus-id\tscore", *rows])
    dev = load_qrels(tmp_path, "dev")
    train = load_qrels(tmp_path, "train")
    expected = split_queries(train, DEV_HOLDOUT_FRACTION, DEV_HOLDOUT_SEED)[1]
    assert dev == expected and 0 < len(dev) < len(train)


def test_a_dev_file_wins_over_the_held_out_part_of_train(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    write_lines(tmp_path / "qrels" / "train.tsv", ["query-id\tcorpus-id\tscore", "q\td\t1"])
    write_lines(tmp_path / "qrels" / "dev.tsv", ["query-id\tcorpus-id\tscore", "v\td\t2"])
    assert load_qrels(tmp_path, "dev") == {"v": {"d": 2}}


def test_qrels_skip_header_and_parse_grades(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    write_lines(
        tmp_path / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q1\td2\t0"]
    )
    assert load_qrels(tmp_path, "test") == {"q1": {"d1": 2, "d2": 0}}


def test_passage_text_joins_title_and_text() -> None:
    assert passage_text({"title": "T.", "text": " body "}) == "T. body"
    assert passage_text({"title": "", "text": "body"}) == "body"
