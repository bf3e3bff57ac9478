"""GC "invoke" mode: an HTTP server on 127.0.0.1:4743 that loads the models once and runs cases on demand.

- ``GET /health``: 200 ``{"status": "ready"}`` once the models are loaded, 503 before (and
  after a failed load, with the error);
- ``POST /invoke``: runs one case from ``/input`` to ``/output`` (one case at a time, under a
  lock): 201 with a short summary, or 500 ``{"error": "<file>: <problem>"}`` with nothing written.

Standard library only (``http.server``); requests are served on threads so that ``/health``
answers while a case runs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from algorithm.models import Models
from algorithm.pipeline import Options, read_gc_input, run_gc_case
from spine.layout import AlgorithmLayout

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "InvokeServer"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4743


class InvokeServer(ThreadingHTTPServer):
    """The invoke-mode server; :meth:`load_in_background` then :meth:`serve_forever`."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], layout: AlgorithmLayout, load: Callable[[], Models],
                 *, options: Options | None = None) -> None:
        super().__init__(address, _Handler)
        self.layout = layout
        self.options = options
        self._load = load
        self.models: Models | None = None
        self.load_error: str | None = None
        self.case_lock = threading.Lock()
        self.loaded = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def load_models(self) -> None:
        """Load the models (blocking); on failure keep the error for ``/health`` and re-raise."""
        try:
            self.models = self._load()
        except Exception as error:
            self.load_error = str(error)
            raise
        finally:
            self.loaded.set()

    def load_in_background(self, on_error: Callable[[BaseException], None] | None = None) -> threading.Thread:
        def target() -> None:
            try:
                self.load_models()
            except Exception as error:
                log.error("model loading failed: %s", error)
                if on_error is not None:
                    on_error(error)

        thread = threading.Thread(target=target, name="load-models", daemon=True)
        thread.start()
        return thread

    def invoke(self) -> tuple[HTTPStatus, dict[str, Any]]:
        """Run one case; the HTTP status and JSON body to answer with."""
        if self.models is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": self.load_error or "models are still loading"}
        with self.case_lock:
            try:
                path, image = read_gc_input(self.layout)
                result = run_gc_case(path, image, self.layout, self.models, options=self.options)
            except Exception as error:
                log.error("invoke failed: %s", error, exc_info=not isinstance(error, ValueError))
                return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(error)}
        return HTTPStatus.CREATED, {"status": "succeeded", "input": str(path),
                                    "vertebrae": [v.name for v in result.vertebrae], "note": result.note}


class _Handler(BaseHTTPRequestHandler):
    server: InvokeServer
    protocol_version = "HTTP/1.1"

    def _answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/health":
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: GET {self.path}"})
        elif self.server.models is not None:
            self._answer(HTTPStatus.OK, {"status": "ready"})
        else:
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE,
                         {"status": "error" if self.server.load_error else "loading",
                          **({"error": self.server.load_error} if self.server.load_error else {})})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # the request body carries nothing the case needs
        if self.path.rstrip("/") != "/invoke":
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {self.path}"})
            return
        self._answer(*self.server.invoke())

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)
