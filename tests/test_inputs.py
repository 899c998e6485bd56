"""The input rules on their own (mes.domain.inputs, mes.services.cursors): plain functions, no app."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from mes.domain import inputs
from mes.domain.errors import BadQuery
from mes.services import cursors


@pytest.mark.parametrize("raw", ["0", "7", "0200", "9223372036854775807"])
def test_ascii_integers_are_read(raw):
    assert inputs.parse_int(raw, 0, inputs.MAX_ROW_ID) == int(raw)


@pytest.mark.parametrize("raw", ["", "²", "٣", "１", "-1", "+1", " 1", "1.0", "1e3", "9223372036854775808", "9" * 5000])
def test_anything_else_is_not_an_integer(raw):
    with pytest.raises(ValueError, match="integer from 0 to"):
        inputs.parse_int(raw, 0, inputs.MAX_ROW_ID)


def test_instants_are_moved_to_utc_and_kept_within_years_1_to_9999():
    assert inputs.parse_instant("2026-01-31T12:00:00+02:00") == datetime(2026, 1, 31, 10, tzinfo=timezone.utc)
    assert inputs.parse_instant("2026-01-31T12:00:00.1234567Z").microsecond == 123456
    for raw in ("9999-12-31T23:59:59-00:01", "0001-01-01T00:00:00+00:01", "2026-01-31T12:00:00+24:00",
                "2026-01-31T12:00:00", "2026-01-31 12:00:00Z", "2026-01-31T12:00:00Z\x00"):
        with pytest.raises(ValueError):
            inputs.parse_instant(raw)
    assert inputs.parse_instant("9999-12-31T23:59:59-00:01", clamp=True) == datetime.max.replace(tzinfo=timezone.utc)
    assert inputs.parse_instant("0001-01-01T00:00:00+00:01", clamp=True) == datetime.min.replace(tzinfo=timezone.utc)


def test_text_rules_for_one_line_and_free_text():
    assert inputs.check_text("Oak, 2 cm") == "Oak, 2 cm"
    assert inputs.check_text("line 1\r\n\tline 2", multiline=True)
    for bad, multiline in (("a\x00", True), ("a\nb", False), ("a\x7f", True), ("\ud800", True)):
        with pytest.raises(ValueError, match="control characters"):
            inputs.check_text(bad, multiline=multiline)


def test_json_depth_counts_brackets_outside_strings_only():
    assert not inputs.json_depth_exceeds('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    assert not inputs.json_depth_exceeds("[" * 16 + "]" * 16)
    assert inputs.json_depth_exceeds("[" * 17)
    assert not inputs.json_depth_exceeds('"\\"' * 20_000)  # an unterminated string scans in linear time


def test_cursors_round_trip_with_their_types():
    value = cursors.encode("2026-01-31", 2, 42)
    assert cursors.decode(value, cursors.day, cursors.priority, cursors.row_id) == [date(2026, 1, 31), 2, 42]
    value = cursors.encode("2026-01-31T10:00:00.5+00:00", 7)
    assert cursors.decode(value, cursors.instant, cursors.row_id)[0].microsecond == 500000


@pytest.mark.parametrize("values", [[True], ["1"], [[1]], [1.0], [-1], [2**63], [None], [1, 2], []])
def test_cursor_values_of_the_wrong_type_are_a_bad_cursor(values):
    with pytest.raises(BadQuery):
        cursors.decode(cursors.encode(*values), cursors.row_id)
