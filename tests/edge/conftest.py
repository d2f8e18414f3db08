"""Edge tests: the Greengrass component run by a simulated nucleus (tests/edge/nucleus.py) that downloads
its artifacts from a real S3 API (a moto server on 127.0.0.1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.edge.nucleus import Nucleus, running_nucleus
from tests.support.processes import free_port

REGION = "us-east-1"
#: The operator's (fake) credentials, used by the tests to upload; the nucleus has its own.
OPERATOR_CREDENTIALS = {"aws_access_key_id": "operator-testing", "aws_secret_access_key": "operator-testing"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/edge/" in str(item.fspath):
            item.add_marker(pytest.mark.edge)


def start_moto() -> tuple[ThreadedMotoServer, str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **OPERATOR_CREDENTIALS)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One S3 API for the session, on a free port of 127.0.0.1."""
    server, endpoint = start_moto()
    yield endpoint
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    return s3_client(moto_endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"edge-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def nucleus(tmp_path: Path, moto_endpoint: str) -> Iterator[Nucleus]:
    with running_nucleus(tmp_path / "greengrass" / "v2", moto_endpoint) as device:
        yield device
