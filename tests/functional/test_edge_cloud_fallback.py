"""The edge door's cloud fallback over real sockets: the door's handler behind a real LocalServer, and a
real modelship server (or a small HTTP server with canned answers) playing the cloud, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
from modelship.doors.apigw import proxy_handler
from modelship.doors.local_http import LocalServer

from edge_greengrass.cloud_fallback import CloudForwarder, HybridHandler
from edge_greengrass.settings import parse_cloud_configuration
from tests.support.cloud_stub import RecordingCloud
from tests.support.oip import json_request

API_KEY = "device-key-0123456789abcdef"
A = np.array([[1, 2, 3, 4]], np.float32)
IRIS = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def ask(url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def cloud(populated_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingCloud]:
    server = RecordingCloud(populated_store, tmp_path_factory.mktemp("cloud-cache"))
    yield server
    server.stop()


@contextlib.contextmanager
def door(store: Path, cache: Path, **configuration: str) -> Iterator[str]:
    """The door's handler with the fallback, holding iris version 1 only, behind a real LocalServer."""
    settings = parse_cloud_configuration(configuration)
    assert settings is not None
    service = InferenceService.from_settings(
        Settings(store_uri=str(store), cache_dir=cache, isolate_loads=False)
    )
    handler = HybridHandler(proxy_handler(service), {"iris": frozenset({1})}, CloudForwarder(settings, {}))
    server = LocalServer(("127.0.0.1", 0), handler, 6 * 1024 * 1024)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)
        server.drain(0.5, lambda: None, 0.5)
        server.server_close()


@contextlib.contextmanager
def canned_cloud(status: int, headers: dict[str, str], body: bytes) -> Iterator[str]:
    """A cloud that answers every request the same way."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815 (http.server names them so)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_api_key_mode_sends_the_device_key_and_nothing_of_the_caller(
    cloud: RecordingCloud, populated_store: Path, tmp_path: Path
) -> None:
    with door(
        populated_store,
        tmp_path,
        cloudEndpoint=cloud.url,
        cloudAuth="apiKey",
        cloudApiKey=API_KEY,
        cloudOnlyModels="identity_fp32",
    ) as url:
        before = len(cloud.requests)
        caller = {
            "Content-Type": "application/json",
            "Authorization": "Bearer caller-token",
            "x-api-key": "caller-key",
            "Cookie": "session=caller",
            "Connection": "keep-alive",
            "X-Forwarded-For": "10.0.0.9",
            "Accept": "application/json",
        }
        body = json_request({"a": (A, "FP32"), "b": (A, "FP32")})
        answer = ask(url, "POST", "/v2/models/add_sub/infer", body, caller)
        assert answer.status == 200, answer.body
        assert answer.json()["parameters"]["served_by"] == "cloud"
        recorded = cloud.requests[before]
        assert recorded.headers["x-api-key"] == API_KEY
        assert recorded.headers["accept"] == "application/json"
        for name in ("authorization", "cookie", "x-forwarded-for", "x-amz-date"):
            assert name not in recorded.headers, name
        assert "caller" not in json.dumps(recorded.headers)

        metadata = ask(url, "GET", "/v2/models/add_sub")
        assert metadata.status == 200 and metadata.json()["name"] == "add_sub"
        assert metadata.headers["x-modelship-served-by"] == "cloud"

        held = ask(url, "POST", "/v2/models/iris/infer", json_request({"input": (IRIS, "FP32")}))
        assert (
            held.headers["x-modelship-served-by"] == "edge"
            and held.json()["parameters"]["served_by"] == "edge"
        )
        other_version = ask(
            url, "POST", "/v2/models/iris/versions/7/infer", json_request({"input": (IRIS, "FP32")})
        )
        assert other_version.status == 404 and other_version.headers["x-modelship-served-by"] == "cloud"
        assert "error" in other_version.json(), "the cloud's own error, passed on"
        identity = json_request({"x": (np.ones((1, 3), np.float32), "FP32")})
        cloud_only = ask(url, "POST", "/v2/models/identity_fp32/infer", identity)
        assert cloud_only.status == 200 and cloud_only.headers["x-modelship-served-by"] == "cloud"
        health = ask(url, "GET", "/v2/health/live")
        assert health.status == 200 and "x-modelship-served-by" not in health.headers


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected_status", "expected"),
    [
        (
            403,
            {"Content-Type": "application/json"},
            b'{"message":"Forbidden"}',
            502,
            "refused the device's credentials (403): Forbidden",
        ),
        (
            504,
            {"Content-Type": "application/json"},
            b'{"message":"Endpoint request timed out"}',
            504,
            "answered 504: Endpoint request timed out",
        ),
        (200, {"Content-Type": "application/json"}, b"x" * 5000, 502, "larger than 4096 bytes"),
        (
            200,
            {"Content-Type": "application/json"},
            b"<html>not json</html>",
            502,
            "not an Open Inference Protocol response",
        ),
        (
            200,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "999"},
            b"{}",
            502,
            "does not fit its body",
        ),
        (302, {"Location": "https://elsewhere.example.com"}, b"", 502, "unexpected status 302"),
    ],
)
def test_an_unusable_cloud_answer_is_a_clear_json_error(
    populated_store: Path,
    tmp_path: Path,
    status: int,
    headers: dict[str, str],
    body: bytes,
    expected_status: int,
    expected: str,
) -> None:
    with (
        canned_cloud(status, headers, body) as cloud_url,
        door(populated_store, tmp_path, cloudEndpoint=cloud_url, cloudMaxResponseBytes="4096") as url,
    ):
        answer = ask(url, "POST", "/v2/models/add_sub/infer", json_request({"a": (A, "FP32")}))
    assert answer.status == expected_status, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert expected in answer.json()["error"]
    assert answer.headers["x-modelship-served-by"] == "cloud"


def test_a_gzip_request_for_a_cloud_model_is_forwarded_with_its_coding(
    cloud: RecordingCloud, populated_store: Path, tmp_path: Path
) -> None:
    with door(
        populated_store,
        tmp_path,
        cloudEndpoint=cloud.url,
        cloudAuth="apiKey",
        cloudApiKey=API_KEY,
        cloudOnlyModels="add_sub",
    ) as url:
        before = len(cloud.requests)
        body = json_request({"a": (A, "FP32"), "b": (A, "FP32")})
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        answer = ask(url, "POST", "/v2/models/add_sub/infer", gzip.compress(body), headers)
        assert answer.status == 200, answer.body
        assert answer.json()["parameters"]["served_by"] == "cloud"
        recorded = cloud.requests[before]
        assert recorded.headers["content-encoding"] == "gzip"
        assert gzip.decompress(recorded.body) == body
