"""``modelship serve`` as a real process: standard Open Inference Protocol clients, keep-alive,
the bad-request table over HTTP, and a clean Ctrl-C."""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton

from tests.support.bad_requests import BAD_REQUESTS, BadRequestCase
from tests.support.models import add_sub_model
from tests.support.processes import RunningServer, run_modelship, running_server


@pytest.fixture(scope="module")
def server(populated_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    logs = tmp_path_factory.mktemp("logs")
    with running_server(["--store", str(populated_store), "--preload", "iris,add_sub"], logs) as running:
        yield running


def host_port(server: RunningServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_matches_onnxruntime(server: RunningServer, binary: bool) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add_sub")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 4)).astype(np.float32)
    b = rng.standard_normal((8, 4)).astype(np.float32)
    inputs = [triton.InferInput("a", [8, 4], "FP32"), triton.InferInput("b", [8, 4], "FP32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("sum", binary_data=binary),
        triton.InferRequestedOutput("diff", binary_data=binary),
    ]
    result = client.infer("add_sub", inputs, outputs=outputs, request_id="abc")
    expected = ort.InferenceSession(add_sub_model()).run(["sum", "diff"], {"a": a, "b": b})
    np.testing.assert_array_equal(result.as_numpy("sum"), expected[0])
    np.testing.assert_array_equal(result.as_numpy("diff"), expected[1])
    assert result.get_response()["id"] == "abc"


def test_tritonclient_binary_with_no_outputs_named(server: RunningServer) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    samples = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    request = triton.InferInput("input", list(samples.shape), "FP32")
    request.set_data_from_numpy(samples, binary_data=True)
    result = client.infer("iris", [request])
    assert result.as_numpy("label").tolist() == [0, 2]
    assert result.as_numpy("probabilities").shape == (2, 3)


def test_tritonclient_metadata_and_repository(server: RunningServer) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.get_model_metadata("iris")["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    ]
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert index["iris"]["state"] == "READY"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_cli_infer(server: RunningServer, binary: bool) -> None:
    arguments = ["infer", "--url", server.url, "--model", "iris", "--input", "input=[[6.7,3.0,5.2,2.3]]"]
    completed = run_modelship(*arguments, *(["--binary"] if binary else []), timeout=60, check=True)
    document = json.loads(completed.stdout)
    outputs = {output["name"]: output for output in document["outputs"]}
    assert outputs["label"]["data"] == [2]
    assert sum(outputs["probabilities"]["data"]) == pytest.approx(1.0, abs=1e-5)


def test_cli_infer_reports_errors(server: RunningServer) -> None:
    completed = run_modelship(
        "infer", "--url", server.url, "--model", "nosuch", "--input", "x=[1]", timeout=60
    )
    assert completed.returncode == 1
    assert "404" in completed.stderr and "not in the store" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_keep_alive_serves_many_requests_on_one_connection(server: RunningServer) -> None:
    connection = http.client.HTTPConnection(*host_port(server), timeout=10)
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    )
    for _ in range(50):
        connection.request("POST", "/v2/models/iris/infer", body=body)
        response = connection.getresponse()
        assert response.status == 200
        assert orjson.loads(response.read())["outputs"][1]["data"] == [0]
    connection.request("GET", "/v2/health/live")
    assert connection.getresponse().status == 200
    connection.close()


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_bad_request_over_http(server: RunningServer, case: BadRequestCase) -> None:
    connection = http.client.HTTPConnection(*host_port(server), timeout=30)
    # http.client would normalise neither blanks nor dots; send the path exactly as the table has it.
    connection.putrequest(case.method, case.path.replace(" ", "%20"), skip_accept_encoding=True)
    for key, value in case.headers.items():
        connection.putheader(key, value)
    connection.putheader("Content-Length", str(len(case.body)))
    connection.endheaders(case.body)
    response = connection.getresponse()
    payload = response.read()
    assert response.status == case.status, payload[:300]
    assert response.getheader("Content-Type") == "application/json"
    error = orjson.loads(payload)["error"]
    assert case.message in error and "Traceback" not in error
    connection.close()
    live = http.client.HTTPConnection(*host_port(server), timeout=10)
    live.request("GET", "/v2/health/live")
    assert live.getresponse().status == 200


def test_malformed_http_gets_json_error(server: RunningServer) -> None:
    connection = http.client.HTTPConnection(*host_port(server), timeout=10)
    connection.connect()
    assert connection.sock is not None
    connection.sock.sendall(b"NONSENSE\r\n\r\n")
    reply = connection.sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b'{"error":' in reply


def test_one_log_line_per_request(server: RunningServer) -> None:
    connection = http.client.HTTPConnection(*host_port(server), timeout=10)
    connection.request("GET", "/v2/models/iris/ready?probe=log-line")
    assert connection.getresponse().status == 200
    # The line is written just after the response is sent; give the server a moment.
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.log().splitlines() if "probe=log-line" in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == 1
    assert '"GET /v2/models/iris/ready?probe=log-line" 200' in lines[0]


def test_ctrl_c_shuts_down_cleanly(populated_store: Path, tmp_path: Path) -> None:
    with running_server(["--store", str(populated_store)], tmp_path) as running:
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(timeout=15) == 0
        assert "shutting down" in running.log()
        assert "Traceback" not in running.log()


def test_cli_sends_api_key_header(tmp_path: Path) -> None:
    """--api-key reaches the server as x-api-key (API Gateway checks it; here a recording server does)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[str | None] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("x-api-key"))
            body = b'{"error": "stop here"}'
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    recorder = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=recorder.handle_request, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    completed = run_modelship(
        "infer",
        "--url",
        url,
        "--model",
        "iris",
        "--input",
        "input=[1,2,3,4]",
        "--api-key",
        "s3cr3t",
        timeout=60,
    )
    thread.join(timeout=10)
    recorder.server_close()
    assert seen == ["s3cr3t"]
    assert completed.returncode == 1 and "HTTP 403: stop here" in completed.stderr


def raw_exchange(server: RunningServer, request: bytes, read_timeout: float = 5.0) -> bytes:
    """Send bytes exactly as given and read until the server closes or goes quiet."""
    import socket

    with socket.create_connection(host_port(server), timeout=read_timeout) as connection:
        connection.sendall(request)
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_non_ascii_content_length_is_400(server: RunningServer) -> None:
    reply = raw_exchange(server, "POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: ²\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 400") and b"Content-Length" in reply


def test_conflicting_content_lengths_are_refused_not_smuggled(server: RunningServer) -> None:
    smuggled = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (
        b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: "
        + str(2 + len(smuggled)).encode()
        + b"\r\n\r\n{}"
        + smuggled
    )
    reply = raw_exchange(server, request)
    assert reply.startswith(b"HTTP/1.1 400")
    assert reply.count(b"HTTP/1.1 ") == 1, "the bytes after the first body must not be served as a request"


def test_expect_100_continue_refuses_an_oversized_body_first(server: RunningServer) -> None:
    request = (
        b"POST /v2/models/iris/infer HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n"
    )
    reply = raw_exchange(server, request)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"100 Continue" not in reply


def test_http_1_0_keep_alive_is_acknowledged(server: RunningServer) -> None:
    reply = raw_exchange(
        server, b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", read_timeout=1.0
    )
    assert reply.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in reply


def test_head_has_headers_and_no_body(server: RunningServer) -> None:
    connection = http.client.HTTPConnection(*host_port(server), timeout=10)
    connection.request("HEAD", "/v2/health/live")
    response = connection.getresponse()
    assert response.status == 200
    assert response.read() == b""
    connection.request("GET", "/v2/health/live")
    assert orjson.loads(connection.getresponse().read()) == {"live": True}
