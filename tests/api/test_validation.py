"""Every way a metric can be refused names its field, in English and Polish; valid ones pass."""

from __future__ import annotations

import json
import time
import uuid

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectord.api.messages import MESSAGES
from collectord.api.validation import FieldError, decode_metric
from collectord.model import KIND_OF_TYPE, MetricType

NOW = 1_800_000_000.0
OK = {"name": "api.ok", "value": 1.5, "type": "GAUGE"}


def refuse(item: object) -> FieldError:
    with pytest.raises(FieldError) as refused:
        decode_metric(json.dumps(item).encode() if not isinstance(item, bytes) else item, NOW, 300.0)
    return refused.value


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"name": "9starts.with.digit"}, "name", "field_name"),
        ({"name": ""}, "name", "field_name"),
        ({"name": "a" * 256}, "name", "field_name"),
        ({"name": "has space"}, "name", "field_name"),
        ({"name": "trailing\n"}, "name", "field_name"),
        ({"name": 7}, "name", "field_name"),
        ({"value": "1"}, "value", "field_value"),
        ({"value": True}, "value", "field_value"),
        ({"value": None}, "value", "field_value"),
        ({"type": "gauge"}, "type", "field_type"),
        ({"type": "SET"}, "type", "field_type"),
        ({"tags": {f"k{i}": "v" for i in range(21)}}, "tags", "field_tags"),
        ({"tags": {"": "v"}}, "tags", "field_tags"),
        ({"tags": {"k" * 51: "v"}}, "tags", "field_tags"),
        ({"tags": {"k": "v" * 101}}, "tags", "field_tags"),
        ({"tags": {"k": 1}}, "tags", "field_tags"),
        ({"tags": ["k:v"]}, "tags", "field_tags"),
        ({"timestamp": "2026-11-27T18:00:00"}, "timestamp", "field_timestamp"),
        ({"timestamp": "2026-11-27"}, "timestamp", "field_timestamp"),
        ({"timestamp": "yesterday"}, "timestamp", "field_timestamp"),
        ({"timestamp": -1}, "timestamp", "field_timestamp"),
        ({"timestamp": 1.5e12}, "timestamp", "field_timestamp"),
        ({"timestamp": int((NOW + 3600) * 1000)}, "timestamp", "timestamp_outside_window"),
        ({"timestamp": "2020-01-01T00:00:00Z"}, "timestamp", "timestamp_outside_window"),
        ({"unit": "u" * 51}, "unit", "field_unit"),
        ({"aggregationType": "MEDIAN"}, "aggregationType", "field_aggregationType"),
        ({"id": "not-a-uuid"}, "id", "field_id"),
        ({"id": 12}, "id", "field_id"),
        ({"extra": 1}, "extra", "field_unknown"),
    ],
)
def test_each_refusal_names_its_field(change: dict[str, object], field: str, code: str) -> None:
    error = refuse({**OK, **change})
    assert (error.field, error.code) == (field, code)
    assert error.reason("en").startswith(f"{field}:")
    assert error.reason("pl").startswith(f"{field}:")
    assert error.reason("pl") != error.reason("en")


def test_value_out_of_double_range_is_refused() -> None:
    assert refuse(b'{"name":"a","value":1e999,"type":"GAUGE"}').field == "value"


@pytest.mark.parametrize("missing", ["name", "value", "type"])
def test_missing_fields(missing: str) -> None:
    item = {k: v for k, v in OK.items() if k != missing}
    error = refuse(item)
    assert (error.field, error.code) == (missing, "field_missing")
    assert error.reason("pl") == f"{missing}: brak wymaganego pola"


@pytest.mark.parametrize("item", [[1], "metric", 3, None])
def test_not_an_object(item: object) -> None:
    assert refuse(item).code == "metric_not_object"


def test_not_json() -> None:
    assert refuse(b"{nope").code == "body_not_json"


def test_polish_name_message_has_diacritics() -> None:
    assert "Nieprawidłowa nazwa metryki" in refuse({**OK, "name": "-x"}).reason("pl")


def test_every_field_has_a_message_in_both_languages() -> None:
    from collectord.api.schemas import MetricIn

    for field in MetricIn.__struct_fields__:
        english, polish = MESSAGES[f"field_{field}"]
        assert english.startswith(f"{field}:") and polish.startswith(f"{field}:")


names = st.from_regex(r"\A[a-zA-Z][a-zA-Z0-9._-]{0,40}\Z")
tags = st.dictionaries(st.text(min_size=1, max_size=50), st.text(max_size=100), max_size=20)


@given(
    name=names,
    value=st.floats(allow_nan=False, allow_infinity=False),
    kind=st.sampled_from(["COUNTER", "GAUGE", "HISTOGRAM", "SUMMARY"]),
    tags=tags,
    offset_ms=st.integers(-299_000, 59_000),
    as_text=st.booleans(),
    metric_id=st.none() | st.uuids(),
)
def test_every_valid_metric_is_accepted_as_given(
    name: str,
    value: float,
    kind: str,
    tags: dict[str, str],
    offset_ms: int,
    as_text: bool,
    metric_id: uuid.UUID | None,
) -> None:
    millis = int(NOW * 1000) + offset_ms
    stamp: object = millis
    if as_text:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"
    item: dict[str, object] = {"name": name, "value": value, "type": kind, "tags": tags, "timestamp": stamp}
    if metric_id is not None:
        item["id"] = str(metric_id)
    metric, sample = decode_metric(msgspec.json.encode(item), NOW, 300.0)
    (key, sample_tags), sample_kind, sample_value, weight, when = sample
    assert key == name and dict(sample_tags) == tags and sample_value == value and weight == 1.0
    assert sample_kind == KIND_OF_TYPE[MetricType(kind)]
    assert when == pytest.approx(millis / 1000.0)
    assert metric.id == metric_id


def test_new_ids_are_distinct_version_4_uuids() -> None:
    from collectord.api.validation import new_ids

    ids = new_ids(1000)
    assert len(set(ids)) == 1000
    for text in ids[:50]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
