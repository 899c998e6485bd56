"""An OTLP/HTTP trace receiver that the tests start: what a collector (Tempo, an OpenTelemetry
Collector) would receive from the app, decoded with OpenTelemetry's own protobuf messages."""
from __future__ import annotations

import gzip
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                        ExportTraceServiceResponse)


@dataclass
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict = field(default_factory=dict)


def _value(v):
    """An OTLP AnyValue as a Python value."""
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


class OtlpReceiver:
    """POST /v1/traces on a free loopback port; keeps the last `keep` spans."""

    def __init__(self, keep: int = 200_000):
        self.spans: deque[Span] = deque(maxlen=keep)
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver._add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _add(self, request: ExportTraceServiceRequest) -> None:
        self.requests += 1
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    self.spans.append(Span(resource.get("service.name", ""), s.trace_id.hex(), s.span_id.hex(),
                                           s.parent_span_id.hex(), s.name, s.kind,
                                           {a.key: _value(a.value) for a in s.attributes}))

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]

    def wait_for_trace(self, trace_id: str, until, timeout: float = 30.0) -> list[Span]:
        """The spans of one trace, once until(spans) holds (exporters send in batches, every few seconds)."""
        deadline = time.monotonic() + timeout
        spans = self.trace(trace_id)
        while not until(spans) and time.monotonic() < deadline:
            time.sleep(0.2)
            spans = self.trace(trace_id)
        return spans

    def __enter__(self) -> "OtlpReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
