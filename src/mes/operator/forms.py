"""Forms of the operator UI; Flask-WTF adds the CSRF token to each."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, IntegerField, PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional, StopValidation

from ..domain import inputs

# What people type: held to the same text rule as the API's fields. Hidden fields are checked by
# what reads them (a status, a local path), passwords are only ever compared with a hash.
_TYPED_FIELDS = {"StringField": False, "TextAreaField": True}


class Form(FlaskForm):
    """A form whose typed text holds no NUL or other control characters (the database refuses NUL)."""

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        for field in self:
            multiline = _TYPED_FIELDS.get(field.type)
            if multiline is None or not isinstance(field.data, str):
                continue
            try:
                inputs.check_text(field.data, multiline=multiline)
            except ValueError as err:
                field.errors = [*field.errors, str(err)]
                valid = False
        return valid

    def problems(self) -> str:
        """The errors as one sentence for a flash message: 'Reason: must not ...'."""
        return "; ".join(f"{self[name].label.text}: {', '.join(errors)}" for name, errors in self.errors.items())


class VersionField(IntegerField):
    """A status version, read with the service's integer rule (ASCII digits, in range)."""

    def process_formdata(self, valuelist):
        self.data = None
        if valuelist and valuelist[0]:
            self.data = inputs.parse_int(valuelist[0], 1, 2**31 - 1)  # a ValueError is the field's error

    def pre_validate(self, form):
        if self.data is None and not self.process_errors:
            raise StopValidation("This field is required.")


def _strip(value):
    """Surrounding whitespace (a scanner's Tab or Enter too) is no part of a login."""
    return value.strip() if isinstance(value, str) else value


class LoginForm(Form):
    login = StringField("Login", filters=[_strip], validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    next = HiddenField()


class ActionForm(Form):
    """Claim, release, logout: nothing but the CSRF token."""


class ReasonCodeField(VersionField):
    """The id of the reason code an operator picked, read with the same integer rule."""


class OptionalReasonCodeField(ReasonCodeField):
    """A reason code that the service asks for only sometimes (the late reason)."""

    def pre_validate(self, form):
        pass


class StatusForm(Form):
    target = HiddenField("Status", validators=[DataRequired()])
    version = VersionField("Version")
    reason = TextAreaField("Reason", validators=[Optional(), Length(max=500)])
    late_reason = OptionalReasonCodeField("Late reason")


class CancelForm(Form):
    """The confirmation step of a cancellation. The reason is checked by the service (mes.domain.cancel),
    so that a missing one gets the same message wherever the cancellation comes from."""
    cancel_reason = OptionalReasonCodeField("Cancel reason")
    note = TextAreaField("Note", validators=[Optional(), Length(max=500)])
    version = VersionField("Version")


class HoldForm(Form):
    reason_code = ReasonCodeField("Reason")
    note = TextAreaField("Note", validators=[Optional(), Length(max=500)])
    version = VersionField("Version")


class ReleaseHoldForm(Form):
    note = TextAreaField("Note", validators=[Optional(), Length(max=500)])
    version = VersionField("Version")


class NewReasonCodeForm(Form):
    code = StringField("Code", validators=[DataRequired(), Length(max=32)])
    label = StringField("Label", validators=[DataRequired(), Length(max=80)])
    requires_note = BooleanField("Needs a note")


class RelabelForm(Form):
    label = StringField("Label", validators=[DataRequired(), Length(max=80)])


class OutputForm(Form):
    """Quantities as typed or scanned: the counts are checked by mes.domain.production, which names
    every wrong field."""
    good = StringField("Good", validators=[Optional(), Length(max=12)])
    scrap = StringField("Scrap", validators=[Optional(), Length(max=12)])
    defect_code = StringField("Defect", validators=[Optional(), Length(max=32)])
    note = TextAreaField("Note", validators=[Optional(), Length(max=1000)])


class ShipmentForm(Form):
    """A shipment as typed or scanned: the rules (carrier required, an https link, counts within what may
    leave) are mes.domain.shipments', which names every wrong field; these only bound the lengths."""
    carrier = StringField("Carrier", validators=[Optional(), Length(max=64)])
    tracking_number = StringField("Tracking number", validators=[Optional(), Length(max=64)])
    tracking_url = StringField("Tracking link", validators=[Optional(), Length(max=500)])
    packages = StringField("Packages", validators=[Optional(), Length(max=12)])
    quantity = StringField("Pieces", validators=[Optional(), Length(max=12)])
    version = VersionField("Version")
    late_reason = OptionalReasonCodeField("Late reason")

    def fields(self) -> dict:
        """What the domain's parse takes, as typed."""
        return {name: self[name].data for name in ("carrier", "tracking_number", "tracking_url", "packages",
                                                   "quantity")}


class ReworkForm(Form):
    reworks = VersionField("Record")
    quantity = StringField("Pieces back", validators=[DataRequired(), Length(max=12)])
    defect_code = StringField("Defect", validators=[DataRequired(), Length(max=32)])
    note = TextAreaField("Note", validators=[Optional(), Length(max=1000)])


class RateForm(Form):
    family = StringField("Product family", validators=[DataRequired(), Length(max=32)])
    stage = StringField("Stage", validators=[DataRequired(), Length(max=16)])
    per_piece = StringField("Per piece", validators=[DataRequired(), Length(max=16)])
    valid_from = StringField("Valid from", validators=[Optional(), Length(max=10)])


class ReassignForm(Form):
    operator = ReasonCodeField("Operator")  # an operator's id, read with the same integer rule


class NewOperatorForm(Form):
    login = StringField("Login", filters=[_strip], validators=[DataRequired(), Length(max=64)])
    display_name = StringField("Name", validators=[DataRequired(), Length(max=120)])
    role = StringField("Role", validators=[DataRequired(), Length(max=16)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])


class SecretForm(Form):
    """A new password or PIN for an operator (empty PIN: none)."""
    secret = PasswordField("Secret", validators=[Optional(), Length(max=256)])
