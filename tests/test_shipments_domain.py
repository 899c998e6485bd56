"""The rules of shipments (mes.domain.shipments), without a database: what a shipment must say, and how
much of an order may leave."""
from __future__ import annotations

import pytest

from mes.domain import shipments
from mes.domain.errors import Conflict, ValidationFailed
from mes.domain.lifecycle import Status


def fields(**overrides) -> dict:
    base = {"carrier": "DHL", "tracking_number": "JD0146000032", "packages": "2", "quantity": "40",
            "tracking_url": "https://www.dhl.com/track?id=JD0146000032"}
    return base | overrides


def refused(left: int = 40, **overrides) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as err:
        shipments.parse(**fields(**overrides), left=left)
    return {e["field"]: e["message"] for e in err.value.extensions["errors"]}


def test_a_shipment_as_typed_is_trimmed_and_counted():
    s = shipments.parse(**fields(carrier="  DHL Express ", tracking_number=" JD01 "), left=40)
    assert s == shipments.Shipment("DHL Express", "JD01", "https://www.dhl.com/track?id=JD0146000032", 2, 40)
    bare = shipments.parse(carrier="Own truck", quantity=5, left=40)  # no tracking: a van of our own
    assert (bare.tracking_number, bare.tracking_url, bare.packages) == (None, None, 1)
    assert shipments.parse(**fields(tracking_number="", tracking_url="  "), left=40).tracking_url is None


def test_a_carrier_is_required():
    assert refused(carrier="") == {"carrier": "is required"}
    assert refused(carrier="   ") == {"carrier": "is required"}
    assert refused(carrier="D" * 65) == {"carrier": "must be at most 64 characters"}
    assert "control characters" in refused(carrier="DHL\x00")["carrier"]


@pytest.mark.parametrize("url", ["http://www.dhl.com/track", "ftp://dhl.com/x", "www.dhl.com/track", "https://",
                                 "https:///path", "javascript:alert(1)", "https://user@dhl.com/x",
                                 "https://dhl.com/a b", "https://[::1"])
def test_a_tracking_link_must_be_https_to_a_host(url):
    assert refused(tracking_url=url) == {"tracking_url": "must be an https:// link to the carrier's tracking page"}


@pytest.mark.parametrize("value, message", [("0", "must be at least 1"), ("-3", "must be a whole number"),
                                            ("2.5", "must be a whole number"), ("", "is required"),
                                            ("٣", "must be a whole number"), (True, "must be a whole number"),
                                            (0, "must be at least 1")])
def test_quantities_are_positive_whole_numbers(value, message):
    assert refused(quantity=value)["quantity"] == message
    assert refused(packages=value)["packages"] == message


def test_no_more_may_leave_than_is_left_nor_more_packages_than_pieces():
    assert refused(left=30, quantity="31") == {"quantity": "must be at most 30 (the pieces not shipped yet)"}
    assert refused(left=0, quantity="1") == {"quantity": "is too many: every piece made has left already"}
    assert shipments.parse(**fields(quantity="30"), left=30).quantity == 30
    assert refused(packages="5", quantity="4") == {"packages": "must not be more than the pieces (5 for 4)"}
    assert refused(packages="10001", quantity="4")["packages"] == "must be at most 10000"


def test_every_wrong_field_is_named_in_one_readable_error():
    with pytest.raises(ValidationFailed) as err:
        shipments.parse(carrier="", tracking_url="http://x.example", packages="0", quantity="x", left=5)
    assert err.value.detail == ("Check the shipment: carrier is required; tracking url must be an https:// link "
                                "to the carrier's tracking page; packages must be at least 1; "
                                "quantity must be a whole number.")


def test_what_may_ship_is_what_was_made_never_more_than_ordered():
    assert shipments.shippable(ordered=40, produced=30, production_recorded=True) == 30
    assert shipments.shippable(ordered=40, produced=45, production_recorded=True) == 40
    assert shipments.shippable(ordered=40, produced=0, production_recorded=False) == 40  # made before records


@pytest.mark.parametrize("status", list(Status))
def test_shipments_are_recorded_on_packed_and_shipped_orders_only(status):
    if status in (Status.PACKED, Status.SHIPPED):
        shipments.check_may_ship(status)
    else:
        with pytest.raises(Conflict) as err:
            shipments.check_may_ship(status)
        assert err.value.extensions == {"current_status": status.value}


def test_the_api_document_states_the_shipment_limits_the_rules_apply():
    from mes.api.routes import OPENAPI

    shipment = OPENAPI["components"]["schemas"]["Shipment"]["properties"]
    assert shipment["carrier"]["maxLength"] == shipments.MAX_CARRIER
    assert shipment["tracking_number"]["maxLength"] == shipments.MAX_TRACKING_NUMBER
    assert shipment["tracking_url"]["maxLength"] == shipments.MAX_TRACKING_URL
    assert shipment["quantity"]["minimum"] == shipment["packages"]["minimum"] == 1
