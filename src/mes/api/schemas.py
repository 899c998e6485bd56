"""Request bodies of the API: parsed strictly, so that unknown or read-only fields are refused."""
from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from flask import request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from ..domain import inputs
from ..domain.errors import ValidationFailed
from ..domain.priority import Priority

# Every text field passes the same rule as the operator's forms (no NUL, no control characters).
SingleLine = AfterValidator(inputs.check_text)
MultiLine = AfterValidator(lambda value: inputs.check_text(value, multiline=True))
Text64 = Annotated[str, StringConstraints(min_length=1, max_length=64), SingleLine]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OrderCreate(Strict):
    reference: Annotated[str, StringConstraints(min_length=1, max_length=inputs.MAX_REFERENCE_LENGTH,
                                                pattern=inputs.REFERENCE_PATTERN)]
    product: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"\S"), SingleLine]
    material: Text64
    quantity: Annotated[int, Field(ge=1, le=100_000)]
    notes: Annotated[str, StringConstraints(max_length=2000), MultiLine] | None = None
    priority: Literal["urgent", "high", "normal", "low"] = "normal"
    # JSON has no date type: accept the ISO string even in strict mode.
    promised_date: Annotated[date, Field(strict=False)] | None = None

    @property
    def priority_value(self) -> Priority:
        return Priority.from_label(self.priority)


class CancelRequest(Strict):
    reason: Annotated[str, StringConstraints(max_length=500), MultiLine] | None = None


class DeliverRequest(Strict):
    """Nothing to say but that it arrived: who and when are recorded by the service."""


def json_body(optional: bool = False) -> object:
    """The parsed JSON body; 415 for another content type, 400 for malformed or deeply nested JSON."""
    if optional and not request.content_length and not request.data:
        return {}
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as application/json.")
    try:
        text = request.get_data(cache=True).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The body is not UTF-8 text.") from None
    if inputs.json_depth_exceeds(text):
        raise BadRequest(f"The body nests arrays or objects deeper than {inputs.MAX_JSON_DEPTH} levels.")
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("The body is not valid JSON.")
    return data


def validate(model: type[Strict], data: object) -> Strict:
    """Pydantic errors become one 422 listing every field and what is wrong with it."""
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.",
                               errors=[{"field": "(body)", "message": "expected an object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"]) or "(body)"
            message = "may not be set by clients" if e["type"] == "extra_forbidden" else e["msg"]
            errors.append({"field": field, "message": message})
        raise ValidationFailed("Some fields are invalid: " + ", ".join(x["field"] for x in errors) + ".",
                               errors=errors) from None
