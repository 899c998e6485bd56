"""Operators, partners and API clients: creating them, keys, and checking credentials."""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload
from werkzeug.security import check_password_hash, generate_password_hash

from ..db import begin_write
from ..domain.actors import Actor, Role, Scope
from ..domain.errors import Conflict, NotFound, ValidationFailed
from ..domain.logins import login_problem, normalize_login
from ..models import ApiClient, AuditEntry, Operator, Partner, utcnow

KEY_PREFIX = "mes"
# What issue_key() hands out; anything else is unknown without asking the database.
_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}_[0-9a-f]{{8}}_[A-Za-z0-9_-]{{1,128}}")
# Checked against when the login does not exist, so that a wrong login costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not-a-password")


def hash_key(key: str) -> str:
    """Keys are long random strings, so one SHA-256 is enough (unlike passwords)."""
    return hashlib.sha256(key.encode()).hexdigest()


#: Hex digits of a key's SHA-256 that name it in logs and metrics (32 bits: distinct for any real set of keys).
KEY_ID_LENGTH = 8


def key_id(key_hash: str) -> str:
    """A key's short, non-secret name: the start of its SHA-256 (hex). HAProxy logs the same id for every
    Bearer token it sees (haproxy/haproxy.cfg.j2, txn.keyid), so its log, the app's metrics and
    `mes list-clients` can be joined; nothing of the key can be learnt from it."""
    return key_hash[:KEY_ID_LENGTH]


def operator_actor(op: Operator) -> Actor:
    return Actor(kind="operator", id=op.id, name=op.login, role=Role(op.role))


def client_actor(client: ApiClient) -> Actor:
    return Actor(kind="client", id=client.id, name=client.name, scope=Scope(client.scope),
                 partner_id=client.partner_id)


def create_operator(session: Session, login: str, password: str, *, role: str = "operator",
                    display_name: str | None = None) -> Operator:
    """Stored under the normalised login; the display name keeps the spelling as typed."""
    name = normalize_login(login)
    problem = login_problem(name)
    if problem is not None:
        raise ValidationFailed(f"Invalid login: {problem}.", errors=[{"field": "login", "message": problem}])
    _check_password(password)
    if find_operator(session, name) is not None:
        raise Conflict(f"An operator with login {name!r} exists already.")
    op = Operator(login=name, display_name=display_name or login.strip(), role=Role(role).value,
                  password_hash=generate_password_hash(password))
    session.add(op)
    session.commit()
    return op


def find_operator(session: Session, login: str) -> Operator | None:
    """The operator whose login is any spelling of `login` that normalises to it."""
    return session.scalar(select(Operator).where(Operator.login == normalize_login(login)))


BADGE_PREFIX = "OP-"
_PIN = re.compile(r"[0-9]{4,8}")


def badge_value(login: str) -> str:
    """What an operator's badge carries: `OP-<login>`, which the login form takes as the login."""
    return f"{BADGE_PREFIX}{login}"


def badge_problem(value: str) -> str | None:
    """Why a badge value cannot be printed as a Code 128 barcode (it carries ASCII only), or None."""
    if all(" " <= c <= "~" for c in value):
        return None
    return ("this login has letters a Code 128 barcode cannot carry (ASCII only): the operator types the "
            "login instead of scanning a badge")


def badge_login(value: str) -> str:
    """The login on an operator's badge (a Code 128 of `OP-<login>`), or the value as typed."""
    value = value.strip()
    return value[len(BADGE_PREFIX):] if value.upper().startswith(BADGE_PREFIX) else value


def check_operator_login(session: Session, login: str, password: str) -> Operator | None:
    """The active operator with these credentials, or None. `login` may be a badge's value; the secret
    is the password or, for an operator who has one, the PIN (4 to 8 digits)."""
    op = find_operator(session, badge_login(login))
    if op is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    ok = check_password_hash(op.password_hash, password)
    if not ok and op.pin_hash and _PIN.fullmatch(password):
        ok = check_password_hash(op.pin_hash, password)
    return op if ok and op.active else None


def end_sessions(session: Session, operator_id: int) -> None:
    """Move the operator to the next session generation and commit: every session issued before ends at
    its next request, wherever its cookie is."""
    begin_write(session)
    _next_generation(session, operator_id)
    session.commit()


def _next_generation(session: Session, operator_id: int, **changes) -> None:
    session.execute(update(Operator).where(Operator.id == operator_id)
                    .values(session_generation=Operator.session_generation + 1, **changes))


def _change_operator(session: Session, login: str, **changes) -> None:
    """Apply `changes` to the operator's row and end their sessions, in one transaction."""
    begin_write(session)
    op = find_operator(session, login)
    if op is None:
        session.rollback()
        raise NotFound(f"No operator with login {normalize_login(login)!r}.")
    _next_generation(session, op.id, **changes)
    session.commit()


def deactivate_operator(session: Session, login: str) -> None:
    """The operator can no longer log in, and their open sessions end at once."""
    _change_operator(session, login, active=False)


def set_operator_password(session: Session, login: str, password: str) -> None:
    """A new password ends every session opened with the old one."""
    _check_password(password)
    _change_operator(session, login, password_hash=generate_password_hash(password))


def set_operator_pin(session: Session, login: str, pin: str | None) -> None:
    """A PIN (4 to 8 digits) for the shared terminal; None removes it. Sessions end, as for a password."""
    if pin is not None and not _PIN.fullmatch(pin):
        raise ValidationFailed("A PIN is 4 to 8 digits.", errors=[{"field": "pin", "message": "4 to 8 digits"}])
    _change_operator(session, login, pin_hash=generate_password_hash(pin) if pin else None)


def reactivate_operator(session: Session, login: str) -> None:
    _change_operator(session, login, active=True)


def audit(session: Session, actor: Actor, action: str, subject: str, detail: str | None = None) -> None:
    """Record a supervisor's change, in a transaction of its own after the change."""
    begin_write(session)
    session.add(AuditEntry(actor_id=actor.id if actor.kind == "operator" else None, action=action,
                           subject=subject[:140], detail=detail, created_at=utcnow()))
    session.commit()


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise ValidationFailed("Passwords need at least 8 characters.",
                               errors=[{"field": "password", "message": "at least 8 characters"}])


def get_or_create_partner(session: Session, name: str) -> Partner:
    partner = session.scalar(select(Partner).where(Partner.name == name))
    if partner is None:
        partner = Partner(name=name)
        session.add(partner)
        session.flush()
    return partner


@dataclass
class IssuedKey:
    client: ApiClient
    key: str  # shown once, never stored


#: The rate-limit tier a client gets unless told otherwise: the CRM reads for the whole factory.
DEFAULT_TIERS = {Scope.PARTNER: "standard", Scope.CRM: "crm"}


def create_client(session: Session, name: str, *, scope: str, partner_name: str | None = None,
                  rate_tier: str | None = None) -> IssuedKey:
    """Register an API client and issue its first key (in its scope's tier unless `rate_tier` says)."""
    scope = Scope(scope)
    rate_tier = rate_tier or DEFAULT_TIERS[scope]
    if scope is Scope.PARTNER and not partner_name:
        raise ValidationFailed("A partner client needs a partner name.")
    if scope is Scope.CRM and partner_name:
        raise ValidationFailed("A CRM client reads every order and belongs to no partner.")
    if session.scalar(select(ApiClient).where(ApiClient.name == name)):
        raise Conflict(f"A client named {name!r} exists already; issue it a new key instead.")
    partner = get_or_create_partner(session, partner_name) if partner_name else None
    client = ApiClient(name=name, scope=scope.value, partner=partner, rate_tier=rate_tier)
    session.add(client)
    return issue_key(session, client)


def issue_key(session: Session, client: ApiClient) -> IssuedKey:
    """Give the client a new key (the old one stops working) and commit."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    client.key_prefix, client.key_hash, client.revoked_at = prefix, hash_key(key), None
    session.commit()
    return IssuedKey(client, key)


def find_client(session: Session, name: str) -> ApiClient:
    client = session.scalar(select(ApiClient).where(ApiClient.name == name))
    if client is None:
        raise NotFound(f"No API client named {name!r}.")
    return client


def list_clients(session: Session) -> list[ApiClient]:
    """Every API client, by name, with its partner loaded."""
    return list(session.scalars(select(ApiClient).options(selectinload(ApiClient.partner)).order_by(ApiClient.name)))


def revoke_key(session: Session, name: str) -> ApiClient:
    client = find_client(session, name)
    client.revoked_at = utcnow()
    session.commit()
    return client


@dataclass(frozen=True)
class KeyHolder:
    """What a request needs to know about the client behind a key: plain data, not a row, so that
    it can be remembered beyond the request's session (mes.key_cache)."""

    client_id: int
    rate_tier: str
    actor: Actor


def authenticate_key(session: Session, key: str, *, key_hash: str | None = None) -> KeyHolder | None:
    """The client that holds this key, unless the key is unknown or revoked."""
    if not _KEY_SHAPE.fullmatch(key):
        return None
    prefix = key.split("_", 2)[1]
    client = session.scalar(select(ApiClient).where(ApiClient.key_prefix == prefix))
    if client is None or client.revoked_at is not None or client.key_hash is None:
        return None
    if not hmac.compare_digest(client.key_hash, key_hash or hash_key(key)):
        return None
    return KeyHolder(client_id=client.id, rate_tier=client.rate_tier, actor=client_actor(client))


def active_operators(session: Session) -> list[Operator]:
    """Everyone who can be given an order, by name."""
    return list(session.scalars(select(Operator).where(Operator.active.is_(True)).order_by(Operator.display_name)))
