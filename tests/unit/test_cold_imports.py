"""Local stores must not pay for boto3 at cold start; the Lambda door imports only what it needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO_ROOT

PROBE = """
import sys
from modelship.config import Settings
from modelship.service import InferenceService
service = InferenceService.from_settings(Settings(store_uri=sys.argv[1], preload=(("iris", None),)))
service.preload()
assert not service.preload_errors, service.preload_errors
heavy = sorted(name for name in ("boto3", "botocore", "onnx", "aws_xray_sdk") if name in sys.modules)
print(",".join(heavy))
"""


def test_local_store_does_not_import_boto3_or_onnx(populated_store: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, str(populated_store)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT / "functions",
        timeout=60,
        check=True,
    )
    assert completed.stdout.strip() == ""
