"""The evictor's HTTP endpoints: /metrics (Prometheus), /healthz, /readyz, /status (JSON for `kvfs evictor status`)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, disable_created_metrics, generate_latest

log = logging.getLogger("kvfs.evictor.http")

# No `<counter>_created` series: one more series per counter child that no dashboard or alert reads.  This is
# the only place kvfs exports metrics itself; engines' kvfs metrics reach vLLM's /metrics through the
# multiprocess collector, which has no `_created` samples.
disable_created_metrics()


class StatusServer:
    """A small threaded HTTP server; `health()`/`ready()` return (ok, reason), `status()` a JSON-able dict."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        status: Callable[[], dict[str, Any]],
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                    elif path in ("/healthz", "/readyz"):
                        ok, reason = (health if path == "/healthz" else ready)()
                        self._send(200 if ok else 503, (reason or "ok").encode() + b"\n", "text/plain")
                    elif path == "/status":
                        body = json.dumps(status(), indent=2, default=str).encode()
                        self._send(200, body + b"\n", "application/json")
                    else:
                        self._send(404, b"not found: try /metrics /healthz /readyz /status\n", "text/plain")
                except Exception as exc:  # noqa: BLE001 - one failing request must not kill the server
                    log.exception("HTTP %s failed", path)
                    self._send(500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - probes every few seconds: not logged
                return

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port} (metrics_port): {exc.strerror}"
            ) from None
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="evictor-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
