"""The local stack's receiver of Alertmanager's notifications: `python -m stack.alertsink HOST PORT`.

Alertmanager's webhook receivers of the stack (pages, tickets, watchdog: the last part of the URL's path)
point here; every notification it gets is one JSON line on stdout (the stack's logs/alert_receiver.log):
when, which receiver, firing or resolved, and the alerts' names and labels. On VMs the same URLs point at
an incident tool or a chat bridge (group_vars: alertmanager_*_webhook_url). `GET /` answers 200 (ready)."""
from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self._answer(200)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            payload = json.loads(body)
        except ValueError:
            self._answer(400)
            return
        line = {"received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "receiver": self.path.strip("/") or "webhook", "status": payload.get("status"),
                "alerts": [{"status": a.get("status"), "labels": a.get("labels", {})}
                           for a in payload.get("alerts", [])]}
        sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
        sys.stdout.flush()
        self._answer(200)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # one line per notification is enough
        pass


def main(argv: list[str]) -> None:
    host, port = argv[0], int(argv[1])
    ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
