"""The S3 store under faults: a TCP proxy (tests/support/s3_fault_proxy.py) between the code under test
and moto's server, switched at run time to refuse, hang, delay or trickle.

Each test builds a real ``InferenceService`` (or runs ``modelship serve``) against the proxy, with short
S3 timeouts (``S3Limits``) and a fake lifecycle clock, and counts what reached S3: botocore's
``before-call`` (one per API call) and ``before-send`` (one per HTTP attempt, retries included) events,
or the proxy's own counters for a subprocess. Timing is only ever bounded from above.

"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import onnx
import orjson
import pytest
import urllib3.response
from modelship.core.blobs import S3BlobStore, S3Limits
from modelship.core.errors import ModelUnavailable
from modelship.core.manifest import Manifest
from modelship.core.repository import ModelRepository, model_key
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
from moto.server import ThreadedMotoServer

from tests.support.clock import FakeClock
from tests.support.models import identity_model, write_model
from tests.support.processes import REPO_ROOT, free_port, modelship_command, stop
from tests.support.s3_fault_proxy import S3FaultProxy

pytestmark = pytest.mark.timeout(60)

PREFIX = "prod"
INFER = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
)
# Small enough that every fault resolves in seconds: 2 attempts of (0.5 s connect + 1 s read), and a
# whole download of size bytes within 1 s + size at 1 MiB/s, never more than 3 s.
FAST = S3Limits(
    connect_timeout_seconds=0.5,
    read_timeout_seconds=1.0,
    max_attempts=2,
    download_allowance_seconds=1.0,
    download_min_bytes_per_second=1024 * 1024,
    download_max_seconds=3.0,
)
POLL_SECONDS = 60.0
RETRY_SECONDS = 5.0
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
UNSET = ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def measure(what: str, **values: object) -> None:
    """Measurements for the report (shown with ``pytest -rA`` or ``-s``)."""
    print(f"[measure] {what}: " + ", ".join(f"{key}={value}" for key, value in values.items()))


# -- S3: moto's server, the proxy in front of it, and clients ---------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def proxy(moto_url: str) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(moto_url) as running:
        yield running


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, proxy: S3FaultProxy) -> None:
    """Credentials, no shared config, no HTTP proxy, and boto3's endpoint: the fault proxy."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    for key in UNSET:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)


@pytest.fixture
def direct(moto_url: str) -> Any:
    """A client straight to moto, behind the proxy's back: for setting up and tampering."""
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")


@pytest.fixture
def bucket(direct: Any) -> str:
    name = f"faults-{uuid.uuid4().hex[:12]}"
    direct.create_bucket(Bucket=name)
    return name


@dataclass
class S3Calls:
    """What a client sent: ``operations`` once per API call, ``attempts`` once per HTTP attempt."""

    operations: list[str] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.operations.clear()
        self.attempts.clear()

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind, names in (("op", self.operations), ("try", self.attempts)):
            for name in names:
                counts[f"{kind}:{name}"] = counts.get(f"{kind}:{name}", 0) + 1
        return counts


def observed_store(bucket: str, limits: S3Limits = FAST) -> tuple[S3BlobStore, S3Calls]:
    """The store as the server opens it (its own client, endpoint from the environment), observed."""
    store = S3BlobStore(bucket, PREFIX, limits=limits)
    calls = S3Calls()
    events = store.client.meta.events
    events.register("before-call.s3", lambda model, **_: calls.operations.append(model.name))
    events.register(
        "before-send.s3", lambda event_name, **_: calls.attempts.append(event_name.rsplit(".", 1)[-1])
    )
    return store, calls


def push(direct: Any, bucket: str, tmp_path: Path, data: bytes, name: str = "m") -> Manifest:
    repository = ModelRepository(S3BlobStore(bucket, PREFIX, client=direct))
    scratch = tmp_path / f"push-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    return repository.push(write_model(scratch, name, data), name)


def padded_model(size: int) -> bytes:
    """The FP32 identity model with a doc string that makes it about ``size`` bytes."""
    model = onnx.load_from_string(identity_model("FP32"))
    model.doc_string = "x" * size
    serialized: bytes = model.SerializeToString()
    return serialized


@dataclass
class Server:
    service: InferenceService
    calls: S3Calls
    clock: FakeClock

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
        response = self.service.handle(method, path, {}, body)
        return response.status, orjson.loads(response.body) if response.body else {}

    def infer(self, version: int | None = None) -> tuple[int, dict[str, Any]]:
        path = "/v2/models/m/infer" if version is None else f"/v2/models/m/versions/{version}/infer"
        return self.request("POST", path, INFER)


def make_server(
    bucket: str, cache_dir: Path, preload: tuple[tuple[str, int | None], ...] = (), limits: S3Limits = FAST
) -> Server:
    store, calls = observed_store(bucket, limits)
    repository = ModelRepository(store, cache_dir=cache_dir)
    settings = Settings(
        store_uri=repository.uri,
        preload=preload,
        cache_dir=cache_dir,
        version_poll_seconds=POLL_SECONDS,
        failure_retry_seconds=RETRY_SECONDS,
        intra_op_threads=1,
    )
    clock = FakeClock()
    return Server(InferenceService(repository, settings, clock=clock), calls, clock)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


# -- `modelship serve` as a subprocess --------------------------------------------------------------


@dataclass
class ServeProcess:
    url: str
    process: subprocess.Popen[str]
    log_path: Path
    listening_after: float

    def log(self) -> str:
        return self.log_path.read_text()


def http_get(url: str, timeout: float) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def http_post(url: str, body: bytes, timeout: float) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def serve_environment(proxy: S3FaultProxy, tmp_path: Path) -> dict[str, str]:
    environment = {
        **os.environ,
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": proxy.url,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "MODELSHIP_CACHE_DIR": str(tmp_path / "serve-cache"),
        "MODELSHIP_FAILURE_RETRY_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    for key in (*UNSET, "MODELSHIP_STORE", "MODELSHIP_PRELOAD"):
        environment.pop(key, None)
    return environment


@contextmanager
def serving(
    args: list[str], proxy: S3FaultProxy, tmp_path: Path, listen_within: float
) -> Iterator[ServeProcess]:
    """``modelship serve`` against the proxy, yielded once /v2/health/live answers (ready or not:
    ``tests.support.processes.running_server`` waits for ready, which is what these tests look at)."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            modelship_command("serve", "--host", "127.0.0.1", "--port", str(port), *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=serve_environment(proxy, tmp_path),
            cwd=REPO_ROOT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"modelship serve exited with {process.returncode}:\n{log_path.read_text()}"
                )
            try:
                if http_get(f"{url}/v2/health/live", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() - started > listen_within:
                raise AssertionError(
                    f"modelship serve did not answer /v2/health/live within {listen_within} s:\n"
                    + log_path.read_text()
                )
            time.sleep(0.05)
        yield ServeProcess(url, process, log_path, time.monotonic() - started)
    finally:
        stop(process, timeout=5)


def wait_until_ready(server: ServeProcess, within: float) -> float:
    started = time.monotonic()
    while True:
        status, _ = http_get(f"{server.url}/v2/health/ready", timeout=within)
        if status == 200:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"not ready within {within} s:\n{server.log()}")
        time.sleep(0.1)


# -- the harness itself ----------------------------------------------------------------------------


def _exchange(url: str, timeout: float, first_read: int = 65536) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return sock.recv(first_read)


def test_the_proxy_switches_modes_at_run_time(proxy: S3FaultProxy) -> None:
    assert _exchange(proxy.url, timeout=5).startswith(b"HTTP/1.1 200")

    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        _exchange(proxy.url, timeout=5)

    proxy.hang()
    with pytest.raises(TimeoutError):
        _exchange(proxy.url, timeout=0.3)

    proxy.delay(1.5)
    with pytest.raises(TimeoutError):
        _exchange(proxy.url, timeout=0.3)
    assert _exchange(proxy.url, timeout=5).startswith(b"HTTP/1.1 200")

    proxy.trickle(0.05)
    assert len(_exchange(proxy.url, timeout=5)) < 8, "a trickle arrives a byte or so at a time"

    proxy.pass_through()
    assert _exchange(proxy.url, timeout=5).startswith(b"HTTP/1.1 200")
    assert proxy.accepted == 6 and proxy.request_count("GET / ") == 6
    assert proxy.wait_for_client_closes(1, timeout=5)


# -- item 18: a trickling download is bounded as a whole -------------------------------------------


@pytest.mark.parametrize("reader", ["urllib3-read1", "http.client-read1"])
def test_a_trickling_download_gives_up_at_its_deadline_and_closes_the_connection(
    reader: str, proxy: S3FaultProxy, direct: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reader == "http.client-read1":
        # urllib3 < 2.3 has no read1: the store then reads through urllib3's http.client response.
        monkeypatch.setattr(urllib3.response.HTTPResponse, "read1", None)
    data = os.urandom(256 * 1024)
    key = model_key("m", 1)
    direct.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=data)
    store, calls = observed_store(bucket)
    assert store.read(key, len(data)) == data, "the store reads through the proxy"
    calls.clear()

    # Headers and a little of the body at full speed, then a byte every 10 ms: 256 KiB would take 40+
    # minutes. Each byte arrives well within the 1 s read timeout, so only the deadline can stop it.
    proxy.trickle(0.01, head_bytes=1024)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as raised:
        store.read(key, len(data))
    elapsed = time.monotonic() - started
    assert elapsed < 15, "bounded: the deadline (1.25 s here) plus at most one read timeout"
    message = raised.value.message
    assert "timed out" in message and key in message, message
    assert str(Path.cwd()) not in message and "/tmp" not in message, message
    assert calls.attempts == ["GetObject"], "a timed-out download is not retried"
    assert proxy.wait_for_client_closes(1, timeout=5), "the half-read connection is closed"
    measure("trickling download", reader=reader, message=message, calls=calls.summary(), elapsed=elapsed)


def test_a_trickling_model_download_is_a_bounded_503_and_the_model_loads_once_s3_recovers(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, padded_model(256 * 1024))
    server = make_server(bucket, tmp_path / "cache")
    # Listings, the manifest and every response's headers fit in the 4 KiB head; the model does not.
    proxy.trickle(0.01, head_bytes=4096)
    (status, document), elapsed = timed(server.infer)
    assert status == 503, document
    assert "timed out" in document["error"] and model_key("m", 1) in document["error"], document
    assert elapsed < 20, "bounded by the download deadline, not by the size of the model"
    measure("trickling model download", elapsed=round(elapsed, 2), calls=server.calls.summary())
    assert server.calls.attempts.count("GetObject") == 2, "the manifest, then one model download"

    proxy.pass_through()
    server.clock.advance(RETRY_SECONDS)
    assert server.infer()[0] == 200


# -- S3 down at start ------------------------------------------------------------------------------


def test_serve_with_s3_down_at_start_is_live_not_ready_then_ready_when_s3_is_back(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, identity_model("FP32"))
    proxy.refuse()
    with serving(["--store", f"s3://{bucket}/{PREFIX}", "--preload", "m"], proxy, tmp_path, 40) as server:
        assert http_get(f"{server.url}/v2/health/live", timeout=5) == (200, {"live": True})
        (status, document), ready_seconds = timed(
            lambda: http_get(f"{server.url}/v2/health/ready", timeout=15)
        )
        assert status == 503, document
        assert document["ready"] is False and "m" in document["error"], document
        assert proxy.accepted == 0, "refused: nothing got through"

        proxy.pass_through()
        became_ready = wait_until_ready(server, within=30)
        status, document = http_post(f"{server.url}/v2/models/m/infer", INFER, timeout=10)
        assert status == 200, document
        # The preload runs in the background: it either failed (and said so) or was still trying.
        assert "could not preload m" in server.log() or "loaded m v1" in server.log()
    measure(
        "serve with S3 down at start",
        listening_after=round(server.listening_after, 2),
        ready_probe_while_down=round(ready_seconds, 2),
        ready_after_s3_back=round(became_ready, 2),
        proxy_connections_after_back=proxy.accepted,
        proxy_requests=proxy.requests,
    )


def test_serve_listens_at_once_while_a_preload_hangs_on_s3_and_reports_it_in_readiness(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, identity_model("FP32"))
    proxy.hang()
    # The preload alone takes 3 attempts of a 4 s read timeout against a hanging S3; starting the
    # interpreter and importing the server takes well under 10 s here.
    with serving(["--store", f"s3://{bucket}/{PREFIX}", "--preload", "m"], proxy, tmp_path, 10) as server:
        status, document = http_get(f"{server.url}/v2/health/ready", timeout=3)
        assert status == 503, document
        assert document["ready"] is False and "m" in document["error"], document
        proxy.pass_through()
        wait_until_ready(server, within=30)
        assert http_post(f"{server.url}/v2/models/m/infer", INFER, timeout=10)[0] == 200


# -- a warm model while S3 hangs (item 16) ---------------------------------------------------------


def test_a_warm_model_keeps_serving_its_verified_version_while_s3_hangs(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, identity_model("FP32"))
    server = make_server(bucket, tmp_path / "cache")
    assert server.infer()[0] == 200
    assert server.calls.summary() == {
        "op:ListObjectsV2": 1,
        "try:ListObjectsV2": 1,
        "op:GetObject": 2,
        "try:GetObject": 2,
    }
    server.calls.clear()

    proxy.hang()
    for version in (1, None):
        status, document = server.infer(version)
        assert status == 200 and document["model_version"] == "1", document
    assert server.request("GET", "/v2/models/m")[0] == 200
    assert server.calls.operations == [], "within the poll window a warm model needs no S3 call"

    server.clock.advance(POLL_SECONDS + 1)
    (status, document), elapsed = timed(server.infer)
    assert status == 200 and document["model_version"] == "1", document
    assert elapsed < 15
    assert server.calls.operations.count("GetObject") == 0
    measure(
        "warm model, S3 hanging, after the poll window",
        elapsed=round(elapsed, 2),
        calls=server.calls.summary(),
    )


def test_a_warm_model_paces_its_s3_refreshes_while_s3_hangs(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, identity_model("FP32"))
    server = make_server(bucket, tmp_path / "cache")
    assert server.infer()[0] == 200
    server.calls.clear()
    proxy.hang()
    server.clock.advance(POLL_SECONDS + 1)

    def one() -> tuple[int, str, float]:
        (status, document), elapsed = timed(server.infer)
        return status, document.get("model_version", document.get("error", "")), round(elapsed, 3)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: one(), range(6)))
    measure("six concurrent requests, S3 hanging", results=results, calls=server.calls.summary())
    assert [(status, version) for status, version, _ in results] == [(200, "1")] * 6
    assert server.calls.operations.count("ListObjectsV2") <= 1, "one refresh at a time, not one per request"

    server.calls.clear()
    server.clock.advance(1)
    for _ in range(6):
        assert server.infer()[0] == 200
    assert server.calls.operations == [], "a failed refresh is remembered for failure_retry_seconds"

    # S3 is back with a new version: the next refresh, once the retry period has passed, finds it.
    proxy.pass_through()
    push(direct, bucket, tmp_path, padded_model(1024))
    server.clock.advance(RETRY_SECONDS)
    status, document = server.infer()
    assert status == 200 and document["model_version"] == "2", document


def test_no_request_for_a_warm_model_waits_for_a_hanging_s3(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    """As Lambda runs it, one request at a time: whichever request finds the listing stale must not be
    the one that waits out S3's timeouts (with the default limits, 3 attempts of 4 s plus backoff)."""
    push(direct, bucket, tmp_path, identity_model("FP32"))
    server = make_server(bucket, tmp_path / "cache")
    assert server.infer()[0] == 200
    proxy.hang()
    durations = []
    for _ in range(2):
        server.clock.advance(POLL_SECONDS + RETRY_SECONDS)
        (status, document), elapsed = timed(server.infer)
        assert status == 200 and document["model_version"] == "1", document
        durations.append(round(elapsed, 3))
    measure("one request at a time after each retry period, S3 hanging", durations=durations)
    assert max(durations) < FAST.read_timeout_seconds, "the known version is served at once"


def test_a_cold_model_and_readiness_pace_their_s3_attempts_while_s3_is_down(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, identity_model("FP32"))
    server = make_server(bucket, tmp_path / "cache", preload=(("m", None),))
    proxy.refuse()
    server.service.preload()
    for _ in range(3):
        status, document = server.request("GET", "/v2/health/ready")
        assert status == 503 and "m" in document["error"], document
        status, document = server.infer()
        assert status == 503, document
    measure("cold model and readiness, S3 refusing", calls=server.calls.summary())
    assert server.calls.operations.count("ListObjectsV2") <= 1, (
        "within failure_retry_seconds a failed listing is answered from memory"
    )

    proxy.pass_through()
    server.clock.advance(RETRY_SECONDS)
    assert server.request("GET", "/v2/health/ready")[0] == 200


# -- slow S3 ---------------------------------------------------------------------------------------


def test_slow_s3_within_the_read_timeout_still_loads(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, identity_model("FP32"))
    server = make_server(bucket, tmp_path / "cache")
    proxy.delay(0.3)
    (status, document), elapsed = timed(server.infer)
    assert status == 200, document
    assert elapsed < 15
    assert server.calls.attempts == server.calls.operations, "no retries"
    measure("S3 delaying 0.3 s", elapsed=round(elapsed, 2), calls=server.calls.summary())


def test_s3_slower_than_the_read_timeout_is_a_bounded_503(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, identity_model("FP32"))
    server = make_server(bucket, tmp_path / "cache")
    proxy.delay(3)
    (status, document), elapsed = timed(server.infer)
    assert status == 503 and "cannot list versions" in document["error"], document
    assert elapsed < 15
    assert server.calls.operations == ["ListObjectsV2"]
    assert server.calls.attempts == ["ListObjectsV2"] * FAST.max_attempts
    measure("S3 delaying 3 s (read timeout 1 s)", elapsed=round(elapsed, 2), calls=server.calls.summary())


# -- the store's objects change under a running server ---------------------------------------------


def tampered(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def test_a_replaced_object_is_refused_and_the_loaded_version_keeps_serving(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    data = identity_model("FP32")
    push(direct, bucket, tmp_path, data)
    warm = make_server(bucket, tmp_path / "warm-cache")
    assert warm.infer()[0] == 200
    direct.put_object(Bucket=bucket, Key=f"{PREFIX}/{model_key('m', 1)}", Body=tampered(data))

    cold = make_server(bucket, tmp_path / "cold-cache")
    status, document = cold.infer()
    assert status == 503 and "sha256" in document["error"], document
    assert cold.calls.operations.count("GetObject") == 2, "the manifest, then the model"
    cold_calls = cold.calls.summary()
    cold.calls.clear()
    status, document = cold.infer()
    assert status == 503 and "sha256" in document["error"], document
    assert cold.calls.operations == [], "the refusal is remembered for failure_retry_seconds"

    warm.calls.clear()
    for version in (1, None):
        assert warm.infer(version)[0] == 200
    warm.clock.advance(POLL_SECONDS + 1)
    status, document = warm.infer()
    assert status == 200 and document["model_version"] == "1", document
    assert warm.calls.operations == ["ListObjectsV2"], "re-listed, never re-downloaded"

    # A newer version whose bytes were replaced after its push is refused by number; asked for the
    # latest, the verified version 1 keeps serving rather than the refusal.
    push(direct, bucket, tmp_path, padded_model(1024))
    key = f"{PREFIX}/{model_key('m', 2)}"
    direct.put_object(
        Bucket=bucket, Key=key, Body=tampered(direct.get_object(Bucket=bucket, Key=key)["Body"].read())
    )
    warm.clock.advance(POLL_SECONDS + 1)
    status, document = warm.infer(2)
    assert status == 503 and "sha256" in document["error"], document
    assert warm.infer(1)[0] == 200
    status, document = warm.infer()
    assert status == 200 and document["model_version"] == "1", document
    measure("replaced object", cold_calls=cold_calls)


def test_a_deleted_object_is_a_503_for_a_cold_server_and_the_warm_one_keeps_serving(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, identity_model("FP32"))
    warm = make_server(bucket, tmp_path / "warm-cache")
    assert warm.infer()[0] == 200
    direct.delete_object(Bucket=bucket, Key=f"{PREFIX}/{model_key('m', 1)}")

    cold = make_server(bucket, tmp_path / "cold-cache")
    status, document = cold.infer()
    assert status == 503 and "missing" in document["error"], document
    assert warm.infer(1)[0] == 200 and warm.infer()[0] == 200

    # With its manifest gone the version no longer exists: 404 for a cold server; the warm one still
    # serves the session it verified when asked by number.
    direct.delete_object(Bucket=bucket, Key=f"{PREFIX}/models/m/1/manifest.json")
    another = make_server(bucket, tmp_path / "another-cache")
    assert another.infer(1)[0] == 404
    assert another.infer()[0] == 404
    assert warm.infer(1)[0] == 200
    warm.clock.advance(POLL_SECONDS + 1)
    latest = warm.infer()
    measure("deleted object", cold_calls=cold.calls.summary(), warm_latest_after_the_manifest_went=latest)


# -- item 19: an explicit load picks up the newest version -----------------------------------------


def test_repository_load_picks_up_a_version_pushed_just_now(
    proxy: S3FaultProxy, direct: Any, bucket: str, tmp_path: Path
) -> None:
    push(direct, bucket, tmp_path, identity_model("FP32"))
    server = make_server(bucket, tmp_path / "cache")
    assert server.infer()[1]["model_version"] == "1"
    push(direct, bucket, tmp_path, padded_model(1024))

    assert server.request("POST", "/v2/repository/models/m/load") == (200, {})
    status, document = server.infer()
    assert status == 200 and document["model_version"] == "2", document
    assert server.request("GET", "/v2/models/m")[1]["versions"] == ["1", "2"]
