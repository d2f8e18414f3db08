"""Servers that play the cloud endpoint for the edge door's fallback, on 127.0.0.1.

``RecordingCloud`` is a real modelship server (``LocalServer`` running the API Gateway door over a local
store, as ``modelship serve`` does) that also records every request as it arrived; ``SilentServer``
accepts connections and never answers (a cloud that hangs); ``expected_sigv4`` recomputes a request's
signature with botocore's own signer, to check the one the device sent."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pybase64
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
from modelship.doors.apigw import proxy_handler
from modelship.doors.local_http import LocalServer


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class RecordingCloud:
    """A modelship server over ``store``, on ``port`` (0: a free one), recording each request."""

    def __init__(self, store: Path, cache: Path, port: int = 0) -> None:
        settings = Settings(store_uri=str(store), cache_dir=cache, isolate_loads=False)
        self.service = InferenceService.from_settings(settings)
        inner = proxy_handler(self.service)
        self.requests: list[Recorded] = []

        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            raw = event.get("body") or ""
            body = pybase64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
            headers = {key.lower(): value for key, value in (event.get("headers") or {}).items()}
            self.requests.append(Recorded(event["httpMethod"], event["path"], headers, body))
            return inner(event, context)

        self.server = LocalServer(("127.0.0.1", port), handler, 6 * 1024 * 1024)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="cloud", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(10)
        self.server.drain(0.5, lambda: None, 0.5)
        self.server.server_close()


class SilentServer:
    """Accepts connections on ``port`` and reads them, but never answers: a cloud that hangs."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_server(("127.0.0.1", port))
        self.socket.settimeout(0.1)
        self.accepted = 0
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="silent-cloud", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(connection)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self._held:
            with contextlib.suppress(OSError):
                connection.close()
        self.socket.close()


def expected_sigv4(recorded: Recorded, url: str, credentials: dict[str, str], region: str) -> str:
    """The Authorization header botocore's SigV4Auth computes for ``recorded`` at its own X-Amz-Date,
    over the headers the request says it signed."""
    signed_names = recorded.headers["authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
    headers = {name: recorded.headers[name] for name in signed_names}
    request = AWSRequest(method=recorded.method, url=url + recorded.path, data=recorded.body, headers=headers)
    request.context["timestamp"] = recorded.headers["x-amz-date"]
    signer = SigV4Auth(
        Credentials(credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials.get("Token")),
        "execute-api",
        region,
    )
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signed = signer.signed_headers(signer.headers_to_sign(request))
    return (
        f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, SignedHeaders={signed}, Signature={signature}"
    )
