"""Hypothesis strategies for what reaches the service from outside: any text (NUL, controls, digits of
other scripts), any JSON, nesting of any depth, and cursors of every shape, well-typed or not."""
from __future__ import annotations

import base64
import json
from datetime import date, datetime, timedelta, timezone

from hypothesis import strategies as st

from mes.domain.inputs import MAX_ROW_ID
from mes.services import cursors

# Every character UTF-8 can carry, with the ones that broke things before drawn often.
TRICKY = "\x00\x1b\x7f\t\r\n ²٣１\u2028\ufeff[]{}\"\\%+/"
any_char = st.characters(codec="utf-8") | st.sampled_from(TRICKY)
any_text = st.text(any_char, max_size=80)
# Text a person could mean (no control characters), which should mostly be accepted.
plain_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=1, max_size=64)
# Text a person could mean with one control character slipped in (NUL first of all).
dirty_text = st.builds("{}{}{}".format, st.text(max_size=10), st.sampled_from("\x00\x00\x1b\x7f\x0b"),
                       st.text(max_size=10))
references = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,30}", fullmatch=True)
digit_like = st.text(st.characters(categories=["Nd", "No"]) | st.sampled_from("0123456789+- ."), max_size=25)

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
                | st.floats(allow_nan=False, allow_infinity=False) | any_text)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(any_text, inner, max_size=3), max_leaves=8)


@st.composite
def nested_json(draw) -> str:
    """A JSON document wrapped in arrays and objects, from flat to far deeper than any parser likes."""
    depth = draw(st.integers(0, 30) | st.integers(0, 3000))
    text = json.dumps(draw(json_values))
    for _ in range(depth):
        text = draw(st.sampled_from(["[{}]", '{{"reason": {}}}'])).format(text)
    return text


def encode_raw(values: object) -> str:
    """A cursor as the service encodes one, around any JSON value."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


# Values of the types a cursor holds, over their whole range.
row_ids = st.integers(0, MAX_ROW_ID)
priorities = st.integers(0, 3)
days = st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)).map(date.isoformat)
instants = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                        timezones=st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                                                                    max_value=timedelta(hours=23, minutes=59))
                                            .map(lambda d: timedelta(minutes=d // timedelta(minutes=1))))
                        ).map(datetime.isoformat)

well_typed_list_cursors = st.builds(cursors.encode, instants, row_ids)
well_typed_feed_cursors = st.builds(cursors.encode, row_ids)
well_typed_queue_cursors = st.builds(cursors.encode, days, priorities, row_ids)

# Anything a client could send instead: JSON lists of any values and arity, other JSON, other text.
any_cursor = (st.lists(json_values, max_size=4).map(encode_raw) | json_values.map(encode_raw)
              | st.text(st.characters(codec="ascii"), min_size=1, max_size=40) | any_text.filter(bool))
