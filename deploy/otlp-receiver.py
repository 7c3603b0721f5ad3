#!/usr/bin/env python3
"""A small OTLP/HTTP trace receiver for the compose stack's `observability` profile: it takes the
spans that ktrdr-ops, its simulators and workers export (OTLP/HTTP with JSON bodies,
`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`), keeps the latest in memory, and answers which spans a
trace holds:

  POST /v1/traces              an OTLP export request (JSON); 415 for protobuf
  GET  /api/traces/{trace_id}  {"trace_id", "spans": [{span_id, parent_span_id, name, kind,
                               service, start_unix_nano, end_unix_nano, attributes}]}; 404 if none
  GET  /api/services           the service names seen
  GET  /health                 200

It is a stand-in where Jaeger or an OpenTelemetry Collector cannot be pulled; in production point
OTEL_EXPORTER_OTLP_ENDPOINT at one of those instead (both take OTLP/HTTP on port 4318). Only the
standard library: it runs on a bare Python 3.
"""

import json
import os
import re
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN = ("0.0.0.0", int(os.environ.get("OTLP_RECEIVER_PORT", "4318")))
# Exporters send batches of at most a few MB; anything larger is refused unread.
MAX_BODY = 16 * 1024 * 1024
# Spans kept, oldest traces dropped first.
MAX_SPANS = int(os.environ.get("OTLP_RECEIVER_MAX_SPANS", "200000"))
HEX_ID = re.compile(r"^[0-9a-f]{16}([0-9a-f]{16})?$")

lock = threading.Lock()
traces = OrderedDict()  # trace id -> list of spans, in order of first arrival
services = set()
kept = 0


def value_of(any_value):
    """An OTLP AnyValue as plain JSON (strings, numbers, booleans; arrays and maps as their JSON)."""
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in any_value:
            return any_value[key]
    if "intValue" in any_value:
        return int(any_value["intValue"])
    return json.dumps(any_value)[:1000]


def attributes(items):
    return {str(a.get("key"))[:200]: value_of(a.get("value") or {}) for a in items or [] if isinstance(a, dict)}


def spans_of(export):
    """(trace id, span) pairs of an OTLP ExportTraceServiceRequest in JSON."""
    for resource_spans in export.get("resourceSpans") or []:
        resource = attributes((resource_spans.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name", "unknown"))[:200]
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in scope_spans.get("spans") or []:
                trace_id = str(span.get("traceId", "")).lower()
                span_id = str(span.get("spanId", "")).lower()
                if not HEX_ID.match(trace_id) or not HEX_ID.match(span_id):
                    raise ValueError("traceId and spanId must be hex")
                yield trace_id, {
                    "span_id": span_id,
                    "parent_span_id": str(span.get("parentSpanId") or "").lower() or None,
                    "name": str(span.get("name", ""))[:500],
                    "kind": span.get("kind"),
                    "service": service,
                    "start_unix_nano": int(span.get("startTimeUnixNano") or 0),
                    "end_unix_nano": int(span.get("endTimeUnixNano") or 0),
                    "attributes": attributes(span.get("attributes")),
                    "status": span.get("status") or {},
                }


def keep(received):
    global kept
    with lock:
        for trace_id, span in received:
            traces.setdefault(trace_id, []).append(span)
            services.add(span["service"])
            kept += 1
        while kept > MAX_SPANS and traces:
            _, dropped = traces.popitem(last=False)
            kept -= len(dropped)


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path.split("?")[0] != "/v1/traces":
            return self.answer(404, {"error": "no such endpoint"})
        try:
            length = int(self.headers.get("content-length", ""))
        except ValueError:
            return self.answer(411, {"error": "a content-length is required"})
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            return self.answer(413, {"error": f"at most {MAX_BODY} bytes"})
        body = self.rfile.read(length)
        if not (self.headers.get("content-type") or "").startswith("application/json"):
            return self.answer(415, {"error": "this receiver takes OTLP/HTTP JSON (OTEL_EXPORTER_OTLP_PROTOCOL=http/json)"})
        try:
            keep(list(spans_of(json.loads(body))))
        except (ValueError, TypeError, AttributeError) as e:
            return self.answer(400, {"error": f"not an OTLP export request: {e}"[:300]})
        self.answer(200, {"partialSuccess": {}})

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/health":
            return self.answer(200, {"status": "ok"})
        if path == "/api/services":
            with lock:
                return self.answer(200, {"services": sorted(services)})
        if path.startswith("/api/traces/"):
            trace_id = path.rsplit("/", 1)[1].lower()
            with lock:
                spans = list(traces.get(trace_id, []))
            if not spans:
                return self.answer(404, {"error": "no spans of that trace"})
            return self.answer(200, {"trace_id": trace_id, "spans": spans})
        self.answer(404, {"error": "no such endpoint"})

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    print(f"OTLP/HTTP (JSON) receiver on {LISTEN[0]}:{LISTEN[1]}", flush=True)
    ThreadingHTTPServer(LISTEN, Receiver).serve_forever()
