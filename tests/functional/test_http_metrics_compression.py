"""The local HTTP door on 127.0.0.1 (a real LocalServer in this process, the handler ``modelship serve``
runs): ``GET /metrics`` in Prometheus' text format, gzip in both directions, a gzip bomb refused within
the cap, and the bundled client's compression."""

from __future__ import annotations

import gzip
import http.client
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
from modelship.doors.apigw import proxy_handler
from modelship.doors.local_http import LocalServer, serve_forever
from modelship.doors.prometheus_metrics import LATENCY_BUCKETS, MAX_MODEL_LABELS, OTHER_MODEL
from modelship.tools.client import InferenceClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support.http_client import raw_exchange, statuses

WAIT = 10.0
CAP = 1 << 20
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def service(populated_store: Path, tmp_path_factory: pytest.TempPathFactory) -> InferenceService:
    settings = Settings(
        store_uri=str(populated_store),
        cache_dir=tmp_path_factory.mktemp("cache"),
        preload=(("iris", None), ("identity_fp32", None)),
        isolate_loads=False,
        max_request_bytes=CAP,
    )
    service = InferenceService.from_settings(settings)
    service.preload()
    assert not service.preload_errors
    return service


@contextmanager
def running(handler: Any) -> Iterator[LocalServer]:
    server = LocalServer(("127.0.0.1", 0), handler, CAP)
    thread = threading.Thread(target=lambda: serve_forever(server, grace_seconds=1.0), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(WAIT)
        assert not thread.is_alive()


@pytest.fixture
def server(service: InferenceService) -> Iterator[LocalServer]:
    """A fresh server per test: its figures start from zero."""
    with running(proxy_handler(service)) as running_server:
        yield running_server


def exchange(
    server: LocalServer, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*server.server_address, timeout=WAIT)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {key.lower(): value for key, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def iris_body(rows: int = 1) -> bytes:
    document = {
        "inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": IRIS_ROW * rows}]
    }
    return orjson.dumps(document)


def identity_body(rows: int) -> bytes:
    data = (np.arange(rows * 3, dtype=np.float32) / 7).tolist()
    return orjson.dumps({"inputs": [{"name": "x", "shape": [rows, 3], "datatype": "FP32", "data": data}]})


def scrape(server: LocalServer, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """/metrics parsed by prometheus-client's own parser: {family name: family}."""
    status, response_headers, body = exchange(server, "GET", "/metrics", headers=headers)
    assert status == 200, body
    assert response_headers["content-type"].startswith("text/plain; version=0.0.4")
    if response_headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def sample_value(families: dict[str, Any], sample_name: str, **labels: str) -> float | None:
    family_name = sample_name.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
    family_name = family_name.removesuffix("_sum")
    for sample in families[family_name].samples:
        if sample.name == sample_name and all(
            sample.labels.get(key) == value for key, value in labels.items()
        ):
            return float(sample.value)
    return None


REQUESTS = "modelship_http_requests_total"
LATENCY = "modelship_http_request_duration_seconds"


def test_requests_are_counted_per_model_endpoint_and_status(server: LocalServer) -> None:
    for _ in range(3):
        assert exchange(server, "POST", "/v2/models/iris/infer", iris_body())[0] == 200
    assert exchange(server, "POST", "/v2/models/iris/infer", b"{broken")[0] == 400
    assert exchange(server, "POST", "/v2/models/nosuch/infer", iris_body())[0] == 404
    assert exchange(server, "GET", "/v2/models/iris")[0] == 200
    assert exchange(server, "GET", "/v2/health/ready")[0] == 200
    families = scrape(server)
    iris_ok = {"model": "iris", "endpoint": "infer", "status": "200"}
    assert sample_value(families, REQUESTS, **iris_ok) == 3
    assert sample_value(families, REQUESTS, model="iris", endpoint="infer", status="400") == 1
    # A model the server does not know is never a label of its own (clients choose paths).
    assert sample_value(families, REQUESTS, model=OTHER_MODEL, endpoint="infer", status="404") == 1
    assert sample_value(families, REQUESTS, model="nosuch") is None
    assert sample_value(families, REQUESTS, model="iris", endpoint="model_metadata", status="200") == 1
    assert sample_value(families, REQUESTS, model="", endpoint="health", status="200") == 1

    # The histogram: cumulative buckets, +Inf equal to the count, a positive sum.
    buckets = [
        sample
        for sample in families[LATENCY].samples
        if sample.name == f"{LATENCY}_bucket"
        and all(sample.labels[key] == value for key, value in iris_ok.items())
    ]
    assert [sample.labels["le"] for sample in buckets] == [str(float(bound)) for bound in LATENCY_BUCKETS] + [
        "+Inf"
    ]
    counts = [sample.value for sample in buckets]
    assert counts == sorted(counts) and counts[-1] == 3
    assert sample_value(families, f"{LATENCY}_count", **iris_ok) == 3
    sum_value = sample_value(families, f"{LATENCY}_sum", **iris_ok)
    assert sum_value is not None and sum_value > 0

    # Counts go up with the next requests, and the first scrape was counted too.
    assert exchange(server, "POST", "/v2/models/iris/infer", iris_body())[0] == 200
    again = scrape(server)
    assert sample_value(again, REQUESTS, **iris_ok) == 4
    assert sample_value(again, REQUESTS, model="", endpoint="metrics", status="200") == 1


def test_model_load_times_in_flight_and_process_figures(
    server: LocalServer, service: InferenceService
) -> None:
    families = scrape(server)
    loads = {sample.labels["model"]: sample for sample in families["modelship_model_load_seconds"].samples}
    assert set(loads) == {"iris", "identity_fp32"}
    iris = service.lifecycle.get("iris", None)
    assert loads["iris"].labels["version"] == str(iris.version)
    assert loads["iris"].value == pytest.approx(iris.load_seconds)
    assert sample_value(families, "modelship_models_loaded") == 2
    assert sample_value(families, "modelship_http_requests_in_flight") == 0
    assert sample_value(families, "modelship_http_connections_open") == 1  # the scrape's own
    assert "process_cpu_seconds" in families and "python_info" in families


def test_the_snapshot_has_the_same_figures_as_json(server: LocalServer) -> None:
    assert exchange(server, "POST", "/v2/models/iris/infer", iris_body())[0] == 200
    snapshot = orjson.loads(orjson.dumps(server.metrics.snapshot()))
    (iris,) = [row for row in snapshot["requests"] if row["model"] == "iris"]
    assert (iris["endpoint"], iris["status"], iris["count"]) == ("infer", 200, 1)
    assert iris["buckets"]["+Inf"] == 1 and iris["seconds_sum"] > 0
    assert {model["name"] for model in snapshot["models"]} == {"iris", "identity_fp32"}
    assert snapshot["in_flight"] == 0


def test_model_labels_are_bounded(server: LocalServer) -> None:
    """Valid names the server did not answer 404 cannot grow the label set without end."""
    metrics = server.metrics
    for number in range(MAX_MODEL_LABELS + 10):
        metrics.request_done(f"/v2/models/m{number}/infer", 400, 0.001, in_flight=False)
    models = {row["model"] for row in metrics.snapshot()["requests"]}
    assert len(models - {OTHER_MODEL}) == MAX_MODEL_LABELS
    assert OTHER_MODEL in models


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_metrics_is_get_and_head_only(server: LocalServer, method: str) -> None:
    got, headers, body = exchange(server, method, "/metrics", b"{}")
    assert got == 405
    assert headers["allow"] == "GET, HEAD"
    assert "use GET" in orjson.loads(body)["error"]


def test_head_metrics_has_gets_headers_and_no_body(server: LocalServer) -> None:
    status, headers, body = exchange(server, "HEAD", "/metrics")
    assert status == 200 and body == b""
    assert headers["content-type"].startswith("text/plain")


def test_metrics_in_absolute_form(server: LocalServer) -> None:
    """A request target may be a whole URL (RFC 9112, 3.2.2); /metrics is found in it too."""
    host, port = server.server_address[:2]
    reply = raw_exchange(
        (host, port),
        f"GET http://{host}:{port}/metrics?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    assert statuses(reply) == [200] and b"modelship_http_requests_in_flight" in reply


@pytest.mark.parametrize("path", ["/metrics/", "/metricsx", "/v2/metrics", "/METRICS"])
def test_metrics_path_is_exact(server: LocalServer, path: str) -> None:
    status, _, body = exchange(server, "GET", path)
    assert status == 404
    assert "error" in orjson.loads(body)


def test_metrics_are_gzipped_for_a_scraper_that_asks(server: LocalServer) -> None:
    status, headers, body = exchange(server, "GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"modelship_http_requests_in_flight" in gzip.decompress(body)
    # OpenMetrics, when the scraper prefers it (as Prometheus does).
    status, headers, body = exchange(
        server, "GET", "/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0"}
    )
    assert headers["content-type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


# --- compression on the local door -----------------------------------------------------------------------


def test_gzip_round_trip(server: LocalServer) -> None:
    body = identity_body(300)
    status, plain_headers, plain = exchange(server, "POST", "/v2/models/identity_fp32/infer", body)
    assert status == 200 and "content-encoding" not in plain_headers
    assert plain_headers["vary"] == "Accept-Encoding"
    status, headers, squeezed = exchange(
        server,
        "POST",
        "/v2/models/identity_fp32/infer",
        gzip.compress(body),
        {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
    )
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert int(headers["content-length"]) == len(squeezed) < len(plain) / 2
    assert gzip.decompress(squeezed) == plain


@pytest.mark.parametrize(
    ("accept_encoding", "coding"),
    [
        ("gzip;q=0", None),
        ("identity", None),
        ("br", None),
        ("deflate", "deflate"),
        ("*", "gzip"),
        ("gzip;q=0.2, deflate;q=0.8", "deflate"),
        ("GZIP", "gzip"),
    ],
)
def test_accept_encoding_variations(server: LocalServer, accept_encoding: str, coding: str | None) -> None:
    status, headers, body = exchange(
        server,
        "POST",
        "/v2/models/identity_fp32/infer",
        identity_body(300),
        {"Accept-Encoding": accept_encoding},
    )
    assert status == 200
    assert headers.get("content-encoding") == coding
    decoded = {None: lambda raw: raw, "gzip": gzip.decompress, "deflate": zlib.decompress}[coding](body)
    assert orjson.loads(decoded)["outputs"][0]["shape"] == [300, 3]


def test_request_coding_errors_over_http(server: LocalServer) -> None:
    status, _, body = exchange(
        server, "POST", "/v2/models/iris/infer", b"\x00\x01", {"Content-Encoding": "br"}
    )
    assert status == 415 and "not supported" in orjson.loads(body)["error"]
    status, _, body = exchange(
        server, "POST", "/v2/models/iris/infer", b"\x1f\x8b\x08\x00junkjunk", {"Content-Encoding": "gzip"}
    )
    assert status == 400 and "not valid gzip" in orjson.loads(body)["error"]


def test_repeated_content_encoding_lines_are_one_list(server: LocalServer) -> None:
    """Two Content-Encoding lines are the list of both (RFC 9110, 5.3), not the last one alone."""
    host, port = server.server_address[:2]
    body = gzip.compress(iris_body())
    for first, second in (("br", "gzip"), ("gzip", "gzip")):
        head = (
            f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Encoding: {first}\r\nContent-Encoding: {second}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        reply = raw_exchange((host, port), head.encode() + body)
        assert statuses(reply) == [415], (first, second, reply[:300])
    head = (
        "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    assert statuses(raw_exchange((host, port), head.encode() + body)) == [200]


def test_a_gzip_bomb_is_refused_within_the_cap(server: LocalServer) -> None:
    """64 MiB of zeros in about 64 KB: the wire size passes the door's Content-Length check (the cap is
    1 MiB), the inflated size does not. The server (this process) allocates at most about twice the cap on
    the way, nowhere near the bomb's 64 MiB, and keeps serving."""
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)
    assert len(bomb) < CAP
    tracemalloc.start()
    try:
        status, _, body = exchange(
            server, "POST", "/v2/models/iris/infer", bomb, {"Content-Encoding": "gzip"}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413
    assert f"more than the {CAP}-byte limit" in orjson.loads(body)["error"]
    assert peak < 3 * CAP, peak
    assert exchange(server, "POST", "/v2/models/iris/infer", iris_body())[0] == 200


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_with_gzip_both_ways(server: LocalServer, binary: bool) -> None:
    """Triton's own client compresses the whole request and reads Inference-Header-Content-Length of the
    inflated answer: the door agrees with it on which body the header length counts."""
    host, port = server.server_address
    client = triton.InferenceServerClient(url=f"{host}:{port}")
    data = (np.arange(600, dtype=np.float32) / 7).reshape(200, 3)
    request = triton.InferInput("x", [200, 3], "FP32")
    request.set_data_from_numpy(data, binary_data=binary)
    output = triton.InferRequestedOutput("y", binary_data=binary)
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "identity_fp32",
            [request],
            outputs=[output],
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_array_equal(result.as_numpy("y"), data)


def test_the_client_compresses_large_requests_and_decodes_answers(service: InferenceService) -> None:
    seen: list[dict[str, str]] = []
    inner = proxy_handler(service)

    def recording(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event["headers"])
        return inner(event, context)

    with running(recording) as server:
        host, port = server.server_address
        client = InferenceClient(f"http://{host}:{port}")
        data = (np.arange(900, dtype=np.float32) / 7).reshape(300, 3)
        for binary in (False, True):
            document = client.infer("identity_fp32", {"x": data}, {"x": "FP32"}, binary=binary)
            np.testing.assert_array_equal(
                np.asarray(document["outputs"][0]["data"], np.float32).ravel(), data.ravel()
            )
            if binary:  # binary tensors go as they are, and ask for no coding
                assert "Content-Encoding" not in seen[-1]
                assert seen[-1].get("Accept-Encoding", "identity") == "identity"
            else:
                assert seen[-1]["Content-Encoding"] == "gzip" and seen[-1]["Accept-Encoding"] == "gzip"
        result = client.request("POST", "/v2/models/identity_fp32/infer", identity_body(300))
        assert result.headers["content-encoding"] == "gzip"
        assert orjson.loads(result.body)["outputs"][0]["shape"] == [300, 3]
        # A small request goes as it is.
        client.infer("iris", {"input": np.asarray([IRIS_ROW], np.float32)}, {"input": "FP32"})
        assert "Content-Encoding" not in seen[-1]
        # Without compression: a plain body, and no gzip asked for (urllib itself says "identity").
        plain = InferenceClient(f"http://{host}:{port}", compression=False)
        plain.infer("identity_fp32", {"x": data}, {"x": "FP32"})
        assert (
            "Content-Encoding" not in seen[-1] and seen[-1].get("Accept-Encoding", "identity") == "identity"
        )
