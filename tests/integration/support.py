"""Helpers shared by the LocalStack integration tests: loopback HTTP, AWS clients, timings."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("LOCALSTACK_STATE_DIR", ROOT / ".localstack"))
ENDPOINT = f"http://127.0.0.1:{os.environ.get('LOCALSTACK_PORT', '4566')}"
TIMINGS_FILE = STATE_DIR / "integration-timings.json"
DEPLOY_TIMEOUT_SECONDS = 900
# The environment deploy-local.sh and the modelship CLI get: LocalStack, fake credentials, no DNS.
AWS_ENV = {
    "AWS_ENDPOINT_URL": ENDPOINT,
    "AWS_ENDPOINT_URL_S3": ENDPOINT,
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Never let a proxy setting send test traffic anywhere but loopback.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Deployment:
    base_url: str
    bucket: str
    store: str
    function_name: str
    rest_api_id: str
    stage: str
    # The alias API Gateway invokes (a published version), or None if it invokes $LATEST.
    alias: str | None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> HttpResponse:
    """One request to LocalStack; any status is returned, not raised."""
    assert url.startswith("http://127.0.0.1:"), f"tests talk to loopback only, not {url}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    started = time.perf_counter()
    try:
        with NO_PROXY_OPENER.open(request, timeout=timeout) as response:
            payload = response.read()
            status = response.status
            response_headers = {key.lower(): value for key, value in response.headers.items()}
    except urllib.error.HTTPError as error:
        payload = error.read()
        status = error.code
        response_headers = {key.lower(): value for key, value in error.headers.items()}
    return HttpResponse(status, response_headers, payload, time.perf_counter() - started)


def aws_client(service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def localstack_healthy() -> bool:
    try:
        return http("GET", f"{ENDPOINT}/_localstack/health", timeout=3).status == 200
    except OSError:
        return False


class Timings:
    """Durations the docs quote (LocalStack start, deploy, cold and warm invokes), kept in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        start = os.environ.get("MODELSHIP_LOCALSTACK_START_MS")
        if start:
            self.values["localstack_start_ms"] = int(start)

    def record(self, name: str, value: Any) -> None:
        self.values[name] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.values, indent=2) + "\n")
