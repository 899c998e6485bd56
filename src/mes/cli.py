"""The `mes` command: Flask's CLI plus the operations of the order service."""
from __future__ import annotations

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from . import create_app, crm_contract, demo, migrate
from .domain.errors import DomainError
from .domain.webhooks import SUBSCRIBABLE
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
    """Create or upgrade the schema (as MIGRATION_DATABASE_URL when set); refuses (and undoes) a change that
    breaks the CRM's publication (mes.crm_contract)."""
    try:
        migrate.upgrade(current_app.extensions["mes_settings"])
    except crm_contract.ContractBroken as err:
        raise click.ClickException(f"migration refused, nothing changed: {err}") from None
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


@main.command("crm-guard", with_appcontext=False)
@click.option("--crm-dsn", envvar="MES_CRM_GUARD_DSN", required=True,
              help="The CRM's database as crm_guard_role (libpq string; the password may come from PGPASSWORD).")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between checks.")
@click.option("--once", is_flag=True, help="One check (and resync if needed), then exit.")
@click.option("--resync", is_flag=True, help="Resync the copy now whatever the timeline (implies --once).")
def crm_guard(crm_dsn, interval, once, resync):
    """Keep the CRM's copy exact across a failover of the MES: resync it when the MES's timeline changes."""
    from . import crm_guard as guard
    from .logs import configure_logging

    configure_logging("INFO")
    if not (once or resync):
        guard.serve(crm_dsn, interval)
    try:
        done = guard.check_once(crm_dsn, force=resync)
    except (guard.GuardError, guard.psycopg2.Error) as err:
        raise click.ClickException(str(err).strip()) from None
    click.echo("resynced: " + (f"{done.deleted} deleted, {done.updated} corrected, {done.inserted} added at "
                               f"{done.consistent_lsn} (timeline {done.timeline})" if done else "not needed"))


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


# ----------------------------------------------------------------------------------------------- webhooks
@main.group("webhook-endpoints")
def webhook_endpoints():
    """Webhook endpoints of partners and the CRM: where order events are sent, signed."""


def _endpoint_line(e) -> str:
    state = "active" if e.active else "inactive"
    if e.failing_since is not None:
        state += f", failing since {e.failing_since:%Y-%m-%d %H:%M} UTC"
    return f"{e.id}\t{e.partner_id or 'crm'}\t{e.url}\t{','.join(e.types)}\t{state}"


@webhook_endpoints.command("list")
@with_appcontext
def list_webhook_endpoints():
    """Every endpoint: id, partner (crm: every partner), URL, event types, state."""
    from .services import webhooks

    click.echo("id\tpartner\turl\tevent_types\tstate")
    for e in webhooks.list_endpoints(db_session(), None):
        click.echo(_endpoint_line(e))


@webhook_endpoints.command("add")
@click.argument("url")
@click.option("--partner", "partner_name", help="The partner whose orders it hears (default: every partner, "
                                               "as the CRM's).")
@click.option("--events", default=",".join(SUBSCRIBABLE),
              show_default=True, help="Comma-separated event types.")
@click.option("--description")
@click.option("--inactive", is_flag=True, help="Register it without sending to it yet.")
@with_appcontext
def add_webhook_endpoint(url, partner_name, events, description, inactive):
    """Register an endpoint and print its signing secret (shown only this once)."""
    from sqlalchemy import select

    from .models import Partner
    from .services import webhooks

    session = db_session()
    partner_id = None
    if partner_name:
        partner_id = session.scalar(select(Partner.id).where(Partner.name == partner_name.strip()))
        session.rollback()
        if partner_id is None:
            raise click.BadParameter(f"no partner {partner_name!r}", param_hint="--partner")
    fields = {"url": url, "event_types": [t.strip() for t in events.split(",") if t.strip()],
              "description": description, "active": not inactive}
    created = _run(lambda: webhooks.create_endpoint(session, None, fields,
                                                    current_app.extensions["mes_settings"].webhook_address_policy,
                                                    lambda c: {"id": c.endpoint.id, "secret": c.secret},
                                                    partner_id=partner_id)).body
    click.echo(f"endpoint {created['id']} registered; its signing secret, shown only now:")
    click.echo(created["secret"])


@webhook_endpoints.command("set")
@click.argument("endpoint_id", type=int)
@click.option("--url")
@click.option("--events", help="Comma-separated event types.")
@click.option("--active/--inactive", default=None)
@with_appcontext
def set_webhook_endpoint(endpoint_id, url, events, active):
    """Change an endpoint's URL, event types or active flag."""
    from .services import webhooks

    fields = {}
    if url is not None:
        fields["url"] = url
    if events is not None:
        fields["event_types"] = [t.strip() for t in events.split(",") if t.strip()]
    if active is not None:
        fields["active"] = active
    e = _run(lambda: webhooks.update_endpoint(db_session(), None, endpoint_id, fields,
                                              current_app.extensions["mes_settings"].webhook_address_policy))
    click.echo(_endpoint_line(e))


@webhook_endpoints.command("remove")
@click.argument("endpoint_id", type=int)
@with_appcontext
def remove_webhook_endpoint(endpoint_id):
    """Delete an endpoint and its pending deliveries."""
    from .services import webhooks

    _run(lambda: webhooks.delete_endpoint(db_session(), None, endpoint_id))
    click.echo(f"endpoint {endpoint_id} removed")


@webhook_endpoints.command("rotate-secret")
@click.argument("endpoint_id", type=int)
@with_appcontext
def rotate_webhook_secret(endpoint_id):
    """Print a new signing secret; the old one signs too for MES_WEBHOOK_SECRET_OVERLAP_HOURS (24 by default)."""
    from datetime import timedelta

    from .services import webhooks

    cfg = current_app.extensions["mes_settings"]
    created = _run(lambda: webhooks.rotate_secret(db_session(), None, endpoint_id,
                                                  timedelta(hours=cfg.webhook_secret_overlap_hours),
                                                  lambda c: {"secret": c.secret,
                                                             "until": c.endpoint.previous_secret_until})).body
    click.echo(f"new secret of endpoint {endpoint_id} (the old one signs too until {created['until']:%Y-%m-%d %H:%M} "
               "UTC):")
    click.echo(created["secret"])


@webhook_endpoints.command("replay")
@click.argument("endpoint_id", type=int)
@click.option("--from", "start", required=True, help="Start of the range, RFC 3339 (2026-01-31T00:00:00Z).")
@click.option("--to", "end", required=True, help="End of the range (excluded), RFC 3339.")
@click.option("--events", help="Comma-separated event types (default: every type the endpoint subscribes to).")
@with_appcontext
def replay_webhook_range(endpoint_id, start, end, events):
    """Send an endpoint the events of a time range again (each with its own webhook-id)."""
    from .services import webhooks

    cfg = current_app.extensions["mes_settings"]
    fields = {"from": start, "to": end}
    if events is not None:
        fields["event_types"] = [t.strip() for t in events.split(",") if t.strip()]
    limits = webhooks.ReplayLimits(max_days=cfg.webhook_replay_max_days, max_events=cfg.webhook_replay_max_events,
                                   retention=cfg.webhook_retention)
    answer = _run(lambda: webhooks.replay_range(db_session(), None, endpoint_id, fields, limits,
                                                lambda q: {"queued": q.queued}))
    click.echo(f"{answer.body['queued']} deliveries queued for endpoint {endpoint_id}")


@main.command("deliver-webhooks")
@click.option("--once", is_flag=True, help="One pass over what is due, then exit.")
@click.option("--metrics-port", type=int, help="Serve the worker's Prometheus metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@with_appcontext
def deliver_webhooks(once, metrics_port, metrics_host):
    """Send due webhook deliveries until stopped (several workers may run at once on PostgreSQL)."""
    from . import webhook_worker

    webhook_worker.init_tracing()
    metrics = webhook_worker.WebhookMetrics()
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
    factory, cfg = current_app.extensions["mes_sessionmaker"], current_app.extensions["mes_settings"]
    if once:
        counts = webhook_worker.run_once(factory, cfg, metrics)
        click.echo(", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "nothing due")
        return
    webhook_worker.serve(factory, cfg, metrics)


if __name__ == "__main__":
    main()
