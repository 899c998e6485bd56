"""The `mes` command: Flask's CLI plus the operations of the order service."""
from __future__ import annotations

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from . import create_app, demo, migrate
from .domain.errors import DomainError
from .web import db_session


def _run(action):
    """Domain errors become a readable message and exit status 1, not a traceback."""
    try:
        return action()
    except DomainError as err:
        raise click.ClickException(err.detail) from None


@click.group(cls=FlaskGroup, create_app=lambda: create_app(), add_version_option=False)
def main():
    """Operate the MES order service (settings come from the environment, see README)."""


@main.command("migrate")
@with_appcontext
def migrate_command():
    """Create or upgrade the schema (as MIGRATION_DATABASE_URL when set)."""
    migrate.upgrade(current_app.extensions["mes_settings"])
    click.echo("database is at the latest schema")


@main.command("create-operator")
@click.argument("login")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--role", type=click.Choice(["operator", "supervisor"]), default="operator", show_default=True)
@click.option("--name", "display_name", help="Name shown in the UI (default: the login).")
@with_appcontext
def create_operator(login, password, role, display_name):
    """Add an operator who logs in to the operator UI."""
    from .services.accounts import create_operator as create

    op = _run(lambda: create(db_session(), login, password, role=role, display_name=display_name))
    click.echo(f"operator {op.login} ({op.role}) created")


@main.command("set-password")
@click.argument("login")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@with_appcontext
def set_password(login, password):
    """Give an operator a new password; their open sessions end at once."""
    from .services.accounts import set_operator_password

    _run(lambda: set_operator_password(db_session(), login, password))
    click.echo(f"password of {login.strip()} changed; their sessions have ended")


@main.command("deactivate-operator")
@click.argument("login")
@with_appcontext
def deactivate_operator(login):
    """Stop an operator from logging in; their open sessions end at once."""
    from .services.accounts import deactivate_operator as deactivate

    _run(lambda: deactivate(db_session(), login))
    click.echo(f"operator {login.strip()} deactivated; their sessions have ended")


@main.command("create-client")
@click.argument("name")
@click.option("--scope", type=click.Choice(["partner", "crm"]), default="partner", show_default=True)
@click.option("--partner", "partner_name", help="The partner this client acts for (scope partner).")
@click.option("--tier", help="Rate-limit tier (MES_RATE_LIMIT_<TIER>); default: crm for the CRM, standard for "
                             "partners.")
@with_appcontext
def create_client(name, scope, partner_name, tier):
    """Register an API client and print its key (shown only this once)."""
    from .services.accounts import create_client as create

    if tier is not None and tier not in current_app.extensions["mes_settings"].rate_limits:
        raise click.BadParameter(f"unknown tier {tier!r}", param_hint="--tier")
    issued = _run(lambda: create(db_session(), name, scope=scope, partner_name=partner_name or None,
                                 rate_tier=tier))
    click.echo(f"client {name} ({scope}) created; its key, shown only now:")
    click.echo(issued.key)


@main.command("issue-key")
@click.argument("name")
@with_appcontext
def issue_key(name):
    """Replace a client's key with a new one (the old key stops working) and print it."""
    from .services.accounts import find_client, issue_key as issue

    session = db_session()
    issued = _run(lambda: issue(session, find_client(session, name)))
    click.echo(issued.key)


@main.command("revoke-key")
@click.argument("name")
@with_appcontext
def revoke_key(name):
    """Revoke a client's key at once."""
    from .services.accounts import revoke_key as revoke

    _run(lambda: revoke(db_session(), name))
    click.echo(f"key of {name} revoked")


@main.command("list-clients")
@click.option("--key-id", help="Only the client whose key has this id (as HAProxy's log and the metrics show it).")
@with_appcontext
def list_clients(key_id):
    """List the API clients with their key id: the first hex digits of the key's SHA-256, which HAProxy
    logs (key=...) and the app's per-client metrics carry (key_id); never the key."""
    from .services.accounts import key_id as id_of, list_clients as clients

    click.echo("name\tscope\tpartner\ttier\tkey_id\tstate")
    for c in clients(db_session()):
        kid = id_of(c.key_hash) if c.key_hash else "-"
        if key_id and kid != key_id.strip().lower():
            continue
        state = "revoked" if c.revoked_at else ("active" if c.key_hash else "no key")
        click.echo(f"{c.name}\t{c.scope}\t{c.partner.name if c.partner else '-'}\t{c.rate_tier}\t{kid}\t{state}")


@main.command("purge-idempotency-keys")
@with_appcontext
def purge_idempotency_keys():
    """Forget idempotency keys older than the retention (MES_IDEMPOTENCY_RETENTION_HOURS, at least 24)."""
    from .services.orders import purge_idempotency_keys as purge

    click.echo(f"{purge(db_session(), current_app.extensions['mes_settings'].idempotency_retention)} keys purged")


@main.command("recompute-norms")
@with_appcontext
def recompute_norms():
    """Learn stage norms from orders shipped in the last 90 days and stage flows from the last 14 days."""
    from .services import forecast

    click.echo(forecast.recompute_norms(db_session()))


@main.command("recompute-promises")
@with_appcontext
def recompute_promises():
    """Refresh every open order's projection and promise status (run it every few minutes)."""
    from .services import forecast

    click.echo(forecast.recompute_promises(db_session()))


@main.command("backtest")
@click.option("--days", type=click.IntRange(min=1, max=365), default=90, show_default=True)
@with_appcontext
def backtest(days):
    """How good the projections were over the last DAYS: replay the history, compare with what happened."""
    from .services import backtest as backtest_svc

    c = backtest_svc.backtest(db_session(), days)
    click.echo(f"{c.orders} orders shipped in the last {days} days, {c.projections} daily projections scored")
    click.echo(f"mean absolute error of the projected finish: {_days(c.mean_abs_error_days)}")
    click.echo(f"missed their promised date: {c.missed}; flagged at risk before it: {c.flagged_in_time}; "
               f"median warning: {_days(c.median_warning_days)} before the promised date")
    share = "n/a" if c.false_alarm_share is None else f"{c.false_alarm_share:.1%}"
    click.echo(f"orders that kept their date but were flagged at some point: {share}")
    click.echo("(today's norms are used for every past day)")


def _days(value):
    return "n/a" if value is None else f"{value:.1f} days"


@main.command("run-scheduler")
@with_appcontext
def run_scheduler():
    """Run the periodic jobs (promises, norms, idempotency keys) until stopped; several may run at once."""
    from . import scheduler

    scheduler.serve(current_app.extensions["mes_sessionmaker"], current_app.extensions["mes_settings"])


@main.command("jobs")
@with_appcontext
def list_jobs():
    """The periodic jobs: when each runs next, and how its last run went."""
    from sqlalchemy import select

    from .models import JobLease

    for lease in db_session().scalars(select(JobLease).order_by(JobLease.name)):
        outcome = "never ran" if lease.finished_at is None else (
            f"{'ok' if lease.last_ok else 'FAILED'} at {lease.finished_at:%Y-%m-%d %H:%M:%S} UTC: {lease.last_result}")
        click.echo(f"{lease.name}: next {lease.next_run_at:%Y-%m-%d %H:%M:%S} UTC; {outcome}")


@main.command("demo-data")
@click.option("--orders", "count", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--partners", type=click.IntRange(min=1), default=25, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@with_appcontext
def demo_data(count, partners, seed):
    """Load N orders with a realistic spread of statuses, dates and partners (COPY on PostgreSQL)."""
    engine = current_app.extensions["mes_engine"]
    with click.progressbar(length=count, label="loading orders") as bar:
        loaded = demo.load_orders(engine, count, partners=partners, seed=seed, progress=bar.update)
    click.echo(f"{loaded.orders} orders and {loaded.events} status events loaded")
    for line in demo.forecast_all(db_session()):
        click.echo(line)


@main.command("seed-demo")
@click.option("--orders", "count", type=int, default=300, show_default=True)
@with_appcontext
def seed_demo(count):
    """For development: a demo operator, a demo supervisor, a demo partner key, and some orders."""
    for line in demo.seed(db_session(), current_app.extensions["mes_engine"], count):
        click.echo(line)


if __name__ == "__main__":
    main()
