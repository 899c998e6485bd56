#!/usr/bin/python3
"""What the backup repository holds, as Prometheus metrics for node_exporter's textfile collector.

Run on the repository's host after every backup (the backup unit's ExecStopPost, with the unit's result,
as root: the textfile folder is not postgres's) and by Ansible: `backup_metrics.py --config=<pgbackrest.conf> --stanza=mes --out=<dir>/pgbackrest.prom
[--kind=full --result=success]`. Standard library only: it runs on Debian's python3 as the postgres user.

Metrics (label stanza):
  pgbackrest_stanza_status_code                      pgBackRest's status code (0 ok, 2 no backup yet, ...)
  pgbackrest_backup_count{type}                      backups kept, per type
  pgbackrest_backup_last_completion_timestamp_seconds{type}   when the newest backup of a type finished
  pgbackrest_backup_last_size_bytes{type}            its database size
  pgbackrest_backup_last_run_success{type}           1 when the last run of that kind succeeded, else 0
  pgbackrest_backup_last_run_timestamp_seconds{type} when it ended
The run results are kept from one call to the next (read back from the file), so a run of one kind
does not erase another's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

KINDS = ("full", "diff", "incr")
RUN_LINE = re.compile(r'^pgbackrest_backup_last_run_(success|timestamp_seconds)\{stanza="[^"]*",type="(\w+)"\} (\S+)$')


def stanza_info(config: str, stanza: str) -> dict:
    """pgBackRest's view of the stanza, asked as postgres (as root it would leave root-owned logs)."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    out = subprocess.run([*as_postgres, "pgbackrest", f"--config={config}", f"--stanza={stanza}", "--output=json", "info"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)[0]


def previous_runs(path: Path) -> dict[str, dict[str, str]]:
    """The run results already in the file: type -> {success, timestamp_seconds}."""
    runs: dict[str, dict[str, str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            m = RUN_LINE.match(line)
            if m:
                runs.setdefault(m.group(2), {})[m.group(1)] = m.group(3)
    return runs


def render(stanza: str, info: dict, runs: dict[str, dict[str, str]]) -> str:
    label = f'stanza="{stanza}"'
    backups = info.get("backup", [])
    lines = ["# HELP pgbackrest_stanza_status_code pgBackRest's status of the stanza (0 ok, 2 no backup).",
             "# TYPE pgbackrest_stanza_status_code gauge",
             f"pgbackrest_stanza_status_code{{{label}}} {info.get('status', {}).get('code', 99)}",
             "# HELP pgbackrest_backup_count Backups kept in the repository.",
             "# TYPE pgbackrest_backup_count gauge"]
    lines += [f'pgbackrest_backup_count{{{label},type="{k}"}} {sum(b["type"] == k for b in backups)}' for k in KINDS]
    newest = {b["type"]: b for b in backups}            # pgBackRest lists them oldest first
    lines += ["# HELP pgbackrest_backup_last_completion_timestamp_seconds When the newest backup of a type finished.",
              "# TYPE pgbackrest_backup_last_completion_timestamp_seconds gauge"]
    lines += [f'pgbackrest_backup_last_completion_timestamp_seconds{{{label},type="{k}"}} {b["timestamp"]["stop"]}'
              for k, b in newest.items()]
    lines += ["# HELP pgbackrest_backup_last_size_bytes Database size of the newest backup of a type.",
              "# TYPE pgbackrest_backup_last_size_bytes gauge"]
    lines += [f'pgbackrest_backup_last_size_bytes{{{label},type="{k}"}} {b["info"]["size"]}' for k, b in newest.items()]
    lines += ["# HELP pgbackrest_backup_last_run_success 1 when the last scheduled or manual run of a kind succeeded.",
              "# TYPE pgbackrest_backup_last_run_success gauge"]
    lines += [f'pgbackrest_backup_last_run_success{{{label},type="{k}"}} {r["success"]}'
              for k, r in sorted(runs.items()) if "success" in r]
    lines += ["# HELP pgbackrest_backup_last_run_timestamp_seconds When the last run of a kind ended.",
              "# TYPE pgbackrest_backup_last_run_timestamp_seconds gauge"]
    lines += [f'pgbackrest_backup_last_run_timestamp_seconds{{{label},type="{k}"}} {r["timestamp_seconds"]}'
              for k, r in sorted(runs.items()) if "timestamp_seconds" in r]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """node_exporter must never read half a file: write beside it, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pgbackrest-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--stanza", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--kind", choices=KINDS, help="the kind of backup that just ran")
    p.add_argument("--result", help="its result (systemd's $SERVICE_RESULT: success, exit-code, ...)")
    args = p.parse_args(argv)
    runs = previous_runs(args.out)
    if args.kind:
        runs[args.kind] = {"success": "1" if args.result == "success" else "0", "timestamp_seconds": str(int(time.time()))}
    write_atomically(args.out, render(args.stanza, stanza_info(args.config, args.stanza), runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
