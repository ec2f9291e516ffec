"""Signals: transforms against hand-computed values, parsing, extraction, config validation."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reranker.blend.signals import (
    PRESETS,
    SCIFACT,
    STACKEXCHANGE,
    FeatureBatch,
    SignalConfig,
    SignalSpec,
    exp_decay,
    extract,
    fit_pivots,
    gauss_decay,
    get_path,
    identity,
    load_signal_config,
    log1p,
    parse_time,
    saturation,
    to_number,
    transform_values,
)
from reranker.errors import ConfigError
from tests.conftest import require_data

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LN2 = math.log(2.0)

# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------


def test_log1p_hand_values_and_negative_clamp() -> None:
    out = log1p([0.0, math.e - 1.0, 99.0, -5.0])
    np.testing.assert_allclose(out, [0.0, 1.0, math.log(100.0), 0.0])


def test_saturation_hand_values() -> None:
    out = saturation([0.0, 1.0, 3.0, 9.0, -2.0], 3.0)
    np.testing.assert_allclose(out, [0.0, 0.25, 0.5, 0.75, 0.0])


def test_exp_decay_hand_values() -> None:
    out = exp_decay([0.0, 365.0, 730.0, -10.0, 182.5], 365.0)
    np.testing.assert_allclose(out, [1.0, 0.5, 0.25, 1.0, math.sqrt(0.5)])


def test_gauss_decay_hand_values() -> None:
    out = gauss_decay([0.0, 10.0, 20.0, -3.0], 10.0)
    np.testing.assert_allclose(out, [1.0, 0.5, 0.0625, 1.0])


def test_identity_copies() -> None:
    x = np.array([-1.5, 2.0])
    out = identity(x)
    out[0] = 9.0
    assert x[0] == -1.5


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_transform_parameters_must_be_positive_and_finite(bad: float) -> None:
    for fn in (saturation, exp_decay, gauss_decay):
        with pytest.raises(ValueError):
            fn([1.0], bad)


def test_transform_values_uses_the_spec() -> None:
    spec = SignalSpec("a", "f", "saturation", pivot=2.0)
    np.testing.assert_allclose(transform_values(spec, [2.0, 6.0]), [0.5, 0.75])


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------


def test_get_path() -> None:
    doc = {"signals": {"citations": 3, "badges": {"gold": 1}}, "flat.key": 7}
    assert get_path(doc, "signals.citations") == 3
    assert get_path(doc, "signals.badges.gold") == 1
    assert get_path(doc, "flat.key") == 7
    assert get_path(doc, "signals.missing") is None
    assert get_path(doc, "signals.citations.deeper") is None
    assert get_path(None, "a") is None
    assert get_path({"signals.citations": 5}, "signals.citations") == 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, 12.0),
        ("12", 12.0),
        (" 3.5 ", 3.5),
        (True, 1.0),
        (False, 0.0),
        (np.int64(4), 4.0),
        ("abc", None),
        ("", None),
        (None, None),
        (math.nan, None),
        (math.inf, None),
        ("inf", None),
        ("nan", None),
        ([1], None),
        ({"a": 1}, None),
        (10**400, None),
    ],
)
def test_to_number(value: Any, expected: float | None) -> None:
    assert to_number(value) == expected


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2014-01-21T20:31:18.540", datetime(2014, 1, 21, 20, 31, 18, 540000, tzinfo=UTC)),
        ("2014-01-21", _utc(2014, 1, 21)),
        ("2014-01-21T20:31:18Z", _utc(2014, 1, 21, 20, 31, 18)),
        ("2014-01-21T22:31:18+02:00", _utc(2014, 1, 21, 20, 31, 18)),
        ("2014-01", _utc(2014, 1, 1)),
        ("1998", _utc(1998, 1, 1)),
        (1998, _utc(1998, 1, 1)),
        (1998.0, _utc(1998, 1, 1)),
        (1_000_000_000, _utc(2001, 9, 9, 1, 46, 40)),
        (1_000_000_000_000, _utc(2001, 9, 9, 1, 46, 40)),
        ("1000000000", _utc(2001, 9, 9, 1, 46, 40)),
        (datetime(2020, 5, 1, 12), _utc(2020, 5, 1, 12)),
        (date(2020, 5, 1), _utc(2020, 5, 1)),
        ("yesterday", None),
        ("2014-13-45", None),
        ("", None),
        (None, None),
        (True, None),
        (math.nan, None),
        (math.inf, None),
        ([2014], None),
        (10.0**300, None),
    ],
)
def test_parse_time_auto(value: Any, expected: datetime | None) -> None:
    assert parse_time(value) == expected


def test_parse_time_explicit_formats() -> None:
    assert parse_time("21/01/2014", "%d/%m/%Y") == _utc(2014, 1, 21)
    assert parse_time("2014-01-21", "%d/%m/%Y") is None
    assert parse_time(1998, "year") == _utc(1998, 1, 1)
    assert parse_time(1998.5, "year") is None
    assert parse_time(86400, "epoch_s") == _utc(1970, 1, 2)
    assert parse_time(86_400_000, "epoch_ms") == _utc(1970, 1, 2)
    assert parse_time("2014-01-21", "iso") == _utc(2014, 1, 21)
    assert parse_time(2014, "iso") is None


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------

DUMP = "2016-12-10T00:00:00"


def _se(**signals: Any) -> dict[str, Any]:
    return {"text": "an answer", "signals": {"dump_date": DUMP, **signals}}


def test_extract_stackexchange_hand_values() -> None:
    docs = [
        _se(
            OwnerReputation=600,
            Score=3,
            QuestionViewCount=99,
            CreationDate="2015-12-11T00:00:00",  # 365 days before the dump
        ),
        _se(OwnerReputation="1800", Score=-4, QuestionViewCount=0, CreationDate="2017-06-01"),
        _se(OwnerReputation=None, Score="abc", CreationDate="not a date"),
        None,
    ]
    batch = extract(docs, STACKEXCHANGE)
    assert batch.names == ("authority", "popularity", "views", "freshness")
    assert batch.values.dtype == np.float64 and batch.values.shape == (4, 4)
    np.testing.assert_allclose(batch.values[0], [0.5, 0.5, math.log(100.0), 0.5])
    # string parses; negative score clamps to 0 (not a default); future date → age 0
    np.testing.assert_allclose(batch.values[1], [0.75, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(batch.values[2], [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(batch.values[3], [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(
        batch.defaults_used,
        [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]],
    )
    np.testing.assert_array_equal(batch.defaults_count, [0, 0, 4, 4])
    np.testing.assert_allclose(batch.column("authority"), [0.5, 0.75, 0.0, 0.0])


def test_freshness_is_per_document_reference() -> None:
    docs = [
        {"signals": {"dump_date": "2017-01-01", "CreationDate": "2016-01-01"}},
        {"signals": {"dump_date": "2018-01-01", "CreationDate": "2016-01-01"}},
        {"signals": {"CreationDate": "2016-01-01"}},  # no reference → default
    ]
    config = SignalConfig((STACKEXCHANGE.signals[3],))
    batch = extract(docs, config)
    np.testing.assert_allclose(batch.values[:, 0], [0.5 ** (366 / 365), 0.5 ** (731 / 365), 0.0])
    np.testing.assert_array_equal(batch.defaults_used[:, 0], [False, False, True])


def test_extract_scifact_year_against_fixed_reference() -> None:
    docs: list[dict[str, Any]] = [
        {"signals": {"citations": 180, "year": 2016}},
        {"signals": {"citations": None, "year": None}},
        {"signals": {"citations": 540, "year": "2026"}},
    ]
    batch = extract(docs, SCIFACT)
    age = (date(2026, 1, 1) - date(2016, 1, 1)).days  # 3653
    np.testing.assert_allclose(batch.values[0], [0.5, math.exp(-LN2 * age / 3652.5)])
    np.testing.assert_allclose(batch.values[2], [0.75, 1.0])
    np.testing.assert_array_equal(batch.defaults_used[1], [True, True])


def test_reference_now_uses_the_argument_and_gauss() -> None:
    spec = SignalSpec("fresh", "published_at", "gauss_decay", scale_days=10.0, default=0.25)
    config = SignalConfig((spec,))
    now = datetime(2024, 1, 21)  # naive → UTC
    docs = [{"published_at": "2024-01-11"}, {"published_at": "2024-01-01T00:00:00Z"}, {}]
    batch = extract(docs, config, now=now)
    np.testing.assert_allclose(batch.values[:, 0], [0.5, 0.0625, 0.25])
    assert batch.defaults_used[:, 0].tolist() == [False, False, True]


def test_default_is_used_for_non_finite_and_wrong_types() -> None:
    spec = SignalSpec("x", "v", "identity", default=-1.0)
    docs = [{"v": math.nan}, {"v": math.inf}, {"v": [1, 2]}, {"v": {"a": 1}}, {"v": True}, "x"]
    batch = extract(docs, SignalConfig((spec,)))  # type: ignore[arg-type]
    np.testing.assert_array_equal(batch.values[:, 0], [-1, -1, -1, -1, 1, -1])
    assert batch.defaults_used[:, 0].tolist() == [True, True, True, True, False, True]


def test_extract_empty_window_and_empty_config() -> None:
    assert extract([], STACKEXCHANGE).values.shape == (0, 4)
    batch = extract([{}, {}], SignalConfig(()))
    assert batch.values.shape == (2, 0) and batch.defaults_used.shape == (2, 0)
    assert len(batch) == 2


def test_feature_batch_column_unknown() -> None:
    batch = FeatureBatch(values=np.zeros((1, 1)), names=("a",))
    with pytest.raises(KeyError):
        batch.column("b")


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["12", "-3", "2016-01-01", "1998", "2014-01-21T20:31:18Z", "abc", "1e400"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=4,
)


SIGNAL_KEYS = (
    "OwnerReputation",
    "Score",
    "QuestionViewCount",
    "CreationDate",
    "dump_date",
    "citations",
    "year",
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(SIGNAL_KEYS), JSONISH).map(lambda s: {"signals": s})
        | JSONISH,
        max_size=4,
    )
)
def test_extract_never_yields_nan(docs: list[Any]) -> None:
    for config in (STACKEXCHANGE, SCIFACT):
        batch = extract(docs, config, now=datetime(2020, 1, 1))
        assert batch.values.shape == (len(docs), len(config.names))
        assert np.isfinite(batch.values).all()


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transform": "sqrt"}, "unknown transform"),
        ({"transform": "saturation", "pivot": -1.0}, "pivot must be > 0"),
        ({"transform": "saturation", "pivot": 0.0}, "pivot must be > 0"),
        ({"transform": "saturation", "pivot": math.inf}, "finite"),
        ({"transform": "exp_decay"}, "needs half_life_days"),
        ({"transform": "gauss_decay"}, "needs scale_days"),
        ({"transform": "exp_decay", "half_life_days": -3.0}, "must be > 0"),
        ({"transform": "log1p", "pivot": 2.0}, "does not apply"),
        ({"transform": "log1p", "reference": "now"}, "does not apply"),
        ({"transform": "exp_decay", "half_life_days": 1.0, "scale_days": 1.0}, "does not apply"),
        ({"transform": "identity", "date_format": "iso"}, "does not apply"),
        ({"transform": "exp_decay", "half_life_days": 1.0, "date_format": "x"}, "date_format"),
        ({"transform": "exp_decay", "half_life_days": 1.0, "reference": "2026-13-01"}, "not a"),
        ({"transform": "exp_decay", "half_life_days": 1.0, "reference": "a..b"}, "dotted"),
        ({"transform": "log1p", "default": math.nan}, "finite"),
        ({"transform": "log1p", "name": "relevance"}, "reserved"),
        ({"transform": "log1p", "name": "has space"}, "identifier"),
        ({"transform": "log1p", "field": "a..b"}, "dotted path"),
        ({"transform": "log1p", "field": ""}, "dotted path"),
    ],
)
def test_bad_specs_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"name": "sig", "field": "signals.x", **kwargs}
    with pytest.raises(ConfigError, match=message):
        SignalSpec(**args)
    with pytest.raises(ConfigError, match=message):
        SignalConfig.from_dict({"signals": [args]})


def test_duplicate_names_are_refused() -> None:
    spec = SignalSpec("a", "f", "log1p")
    with pytest.raises(ConfigError, match="duplicate"):
        SignalConfig((spec, spec))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"signals": [{"name": "a", "field": "f"}]}, "missing transform"),
        ({"signals": [{"name": "a", "field": "f", "transform": "log1p", "x": 1}]}, "unknown key"),
        (
            {"signals": [{"name": "a", "field": "f", "transform": "saturation", "pivot": "3"}]},
            "number",
        ),
        ({"signals": [{"name": "a", "field": 3, "transform": "log1p"}]}, "string"),
        ({"signals": "a"}, "must be a list"),
        ({"signals": [], "extra": 1}, "unknown key"),
        ({"signals": [3]}, "must be an object"),
    ],
)
def test_bad_config_dicts(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SignalConfig.from_dict(data)


def test_round_trip_and_loading(tmp_path: Path) -> None:
    for preset in (STACKEXCHANGE, SCIFACT):
        assert SignalConfig.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset
    path = tmp_path / "signals.json"
    path.write_text(json.dumps(SCIFACT.to_dict()), encoding="utf-8")
    assert load_signal_config(path) == SCIFACT
    assert load_signal_config(str(path)) == SCIFACT
    assert load_signal_config("StackExchange") is STACKEXCHANGE
    assert load_signal_config("none").names == ()
    assert load_signal_config({"signals": []}) == SignalConfig(())
    with pytest.raises(ConfigError, match="neither a preset"):
        load_signal_config(tmp_path / "missing.json")
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_signal_config(path)


def test_presets_do_not_read_label_leaking_fields() -> None:
    assert STACKEXCHANGE.source_fields == (
        "signals.OwnerReputation",
        "signals.Score",
        "signals.QuestionViewCount",
        "signals.CreationDate",
        "signals.dump_date",
    )
    assert SCIFACT.source_fields == ("signals.citations", "signals.year")
    for config in PRESETS.values():
        for spec in config.signals:
            for bad in ("ParentId", "AcceptedAnswerId", "accepted", "VoteTypeId"):
                assert bad.lower() not in spec.field.lower()
                assert bad.lower() not in (spec.reference or "").lower()


def test_fit_pivots_median_of_positive_values() -> None:
    config = SignalConfig(
        (
            SignalSpec("a", "v", "saturation"),
            SignalSpec("b", "w", "saturation"),
            SignalSpec("c", "v", "saturation", pivot=7.0),
            SignalSpec("d", "v", "log1p"),
        )
    )
    assert config.needs_fit
    with pytest.raises(ConfigError, match="fit_pivots"):
        extract([{"v": 1}], config)
    docs: list[dict[str, Any]] = [
        {"v": 0, "w": -1},
        {"v": -1},
        {"v": 2},
        {"v": "4"},
        {"v": 10},
        {"v": None},
        {"v": "x"},
    ]
    fitted = fit_pivots(docs, config)
    assert not fitted.needs_fit
    assert [s.pivot for s in fitted.signals] == [4.0, 1.0, 7.0, None]
    assert fit_pivots(docs, fitted) is fitted
    np.testing.assert_allclose(
        extract([{"v": 4}], fitted).values, [[0.5, 0.0, 4 / 11, math.log(5)]]
    )


def test_presets_on_real_documents() -> None:
    require_data(DATA / "stackexchange" / "corpus.jsonl")
    require_data(DATA / "scifact" / "signals.jsonl")
    docs: list[dict[str, Any]] = []
    with (DATA / "stackexchange" / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            docs.append(json.loads(line))
            if len(docs) == 300:
                break
    batch = extract(docs, STACKEXCHANGE)
    assert np.isfinite(batch.values).all()
    assert not batch.defaults_used[:, 1:].any()  # only authority can be missing (deleted users)
    assert ((batch.values[:, [0, 1, 3]] >= 0) & (batch.values[:, [0, 1, 3]] <= 1)).all()
    rows: list[dict[str, Any]] = []
    with (DATA / "scifact" / "signals.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) == 300:
                break
    scifact = extract(rows, SCIFACT)
    assert np.isfinite(scifact.values).all()
    assert ((scifact.values >= 0) & (scifact.values <= 1)).all()
