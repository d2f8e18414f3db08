"""Fixtures for the LocalStack integration tests: one real deployment of the CDK app per session.

``scripts/integration.sh`` starts a clean LocalStack, runs these tests and stops it. Run by hand
with ``make localstack-up`` first. Without LocalStack the tests skip, unless
``MODELSHIP_REQUIRE_LOCALSTACK=1`` (set by integration.sh) turns that into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.support import (
    AWS_ENV,
    ENDPOINT,
    ROOT,
    STATE_DIR,
    TIMINGS_FILE,
    Deployment,
    Timings,
    localstack_healthy,
)

DEPLOY_TIMEOUT_SECONDS = 900


@pytest.fixture(scope="session")
def timings() -> Timings:
    return Timings(TIMINGS_FILE)


@pytest.fixture(scope="session")
def localstack() -> str:
    """LocalStack's endpoint; skips (or fails, under integration.sh) when it is not running."""
    if not localstack_healthy():
        message = (
            f"LocalStack is not running on {ENDPOINT}: run `make localstack-up` (or scripts/integration.sh)"
        )
        if os.environ.get("MODELSHIP_REQUIRE_LOCALSTACK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return ENDPOINT


@pytest.fixture(scope="session")
def deploy_local(localstack: str, timings: Timings) -> subprocess.CompletedProcess[str]:
    """scripts/deploy-local.sh, run once as `make deploy-local` runs it: its output is what a user sees."""
    started = time.perf_counter()
    completed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "deploy-local.sh")],
        cwd=ROOT,
        env={**os.environ, **AWS_ENV},
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"deploy-local.sh failed ({completed.returncode}):\n"
            f"{completed.stdout[-4000:]}\n{completed.stderr[-8000:]}"
        )
    timings.record("deploy_local_total_ms", round((time.perf_counter() - started) * 1000))
    return completed


@pytest.fixture(scope="session")
def deployment(deploy_local: subprocess.CompletedProcess[str], timings: Timings) -> Iterator[Deployment]:
    """The real CDK app, deployed by scripts/deploy-local.sh, as .localstack/deployment.json describes it."""
    details = json.loads((STATE_DIR / "deployment.json").read_text())
    timings.record("cdk_deploy_ms", details.get("timings_ms", {}).get("cdk_deploy"))
    yield Deployment(
        base_url=details["base_url"],
        bucket=details["bucket"],
        store=details["store"],
        function_name=details["function_name"],
        rest_api_id=details["rest_api_id"],
        stage=details["stage"],
        alias=details.get("alias"),
    )
    # Teardown is LocalStack's own: integration.sh stops it, and community keeps no state.


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS_FILE.exists() and os.environ.get("MODELSHIP_REQUIRE_LOCALSTACK") == "1":
        terminalreporter.write_sep("-", f"LocalStack timings ({TIMINGS_FILE.relative_to(ROOT)})")
        terminalreporter.write_line(TIMINGS_FILE.read_text().strip())
