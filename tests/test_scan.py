"""The terminal's scan field (mes.domain.scan, /operator/scan): labels, order numbers and references,
an exact hit opens the order, anything else lists the references it begins; the label's barcode."""
from __future__ import annotations

import re

import pytest
from conftest import create_order
from test_operator_ui import ui  # noqa: F401  (the logged-in operator fixture)

from mes.domain.errors import ValidationFailed
from mes.domain.scan import barcode_value, like_prefix, parse_scan


@pytest.mark.parametrize("raw, order_id, only_an_order", [
    ("MES-42", 42, True), ("mes-42\n", 42, True), ("#42", 42, True), (" 42\t", 42, False),
    ("PO-42", None, False), ("MES-", None, False), ("#0", None, True), ("99999999999999999999", None, False),
])
def test_what_a_scan_names(raw, order_id, only_an_order):
    scan = parse_scan(raw)
    assert (scan.order_id, scan.only_an_order, scan.term) == (order_id, only_an_order, raw.strip())


@pytest.mark.parametrize("raw", ["", "   ", "x" * 65, "PO\x00-1"])
def test_an_empty_long_or_binary_scan_is_refused(raw):
    with pytest.raises(ValidationFailed):
        parse_scan(raw)


def test_prefix_patterns_escape_wildcards():
    assert like_prefix("Po_1%") == "po\\_1\\%%" and barcode_value(7) == "MES-7"


def opened(r) -> int | None:
    m = re.search(r"/operator/orders/(\d+)$", r.headers.get("Location", ""))
    return int(m.group(1)) if r.status_code == 302 and m else None


def listed(r) -> list[int]:
    return [int(x) for x in re.findall(r'data-order-id="(\d+)"', r.get_data(as_text=True))]


def test_a_label_a_number_or_a_unique_reference_opens_the_order(client, accounts_, ui):
    partner = accounts_.partner()
    first = create_order(client, partner, reference="PO-7781").get_json()["id"]
    second = create_order(client, partner, reference="po-7790").get_json()["id"]
    for term in (barcode_value(first), f"#{first}", str(first), "PO-7781", " PO-7781\n"):
        assert opened(client.get("/operator/scan", query_string={"q": term})) == first, term
    # A prefix in any case lists the references it begins, in reference order.
    assert listed(client.get("/operator/scan?q=Po-77")) == [first, second]
    assert listed(client.get("/operator/scan?q=po-779")) == [second]
    r = client.get("/operator/scan?q=PO-9")
    assert r.status_code == 200 and 'id="no-match"' in r.get_data(as_text=True)
    assert listed(client.get("/operator/scan", query_string={"q": "PO_7"})) == []  # _ is not a wildcard
    assert opened(client.get(f"/operator/scan?q=MES-{second + 100}")) is None


def test_a_number_that_is_an_order_and_another_orders_reference_lists_both(client, accounts_, ui):
    partner = accounts_.partner()
    first = create_order(client, partner, reference="A-1").get_json()["id"]
    other = create_order(client, partner, reference=str(first)).get_json()["id"]
    assert sorted(listed(client.get(f"/operator/scan?q={first}"))) == sorted([first, other])
    assert opened(client.get(f"/operator/scan?q=%23{first}")) == first  # '#': the order number only


def test_a_bad_scan_is_a_readable_400_and_the_field_is_on_every_page_focused(client, accounts_, ui):
    r = client.get("/operator/scan?q=")
    assert r.status_code == 400 and "Scan a label or type an order number or reference." in r.get_data(as_text=True)
    order_id = create_order(client, accounts_.partner()).get_json()["id"]
    for page in ("/operator/", f"/operator/orders/{order_id}", "/operator/my-work"):
        html = client.get(page).get_data(as_text=True)
        field = re.search(r'<input type="search" name="q" id="scan"[^>]*>', html, re.S)
        assert field and "autofocus" in field.group(0), page


def test_the_label_and_its_barcode(client, accounts_, ui):
    order_id = create_order(client, accounts_.partner(), reference="PO-LBL").get_json()["id"]
    svg = client.get(f"/operator/orders/{order_id}/barcode.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    assert b"<svg" in svg.data and f"MES-{order_id}".encode() in svg.data
    html = client.get(f"/operator/orders/{order_id}/label").get_data(as_text=True)
    assert f"Order #{order_id}" in html and "PO-LBL" in html and f"barcode.svg" in html
    assert client.get("/operator/orders/999999/barcode.svg").status_code == 404
