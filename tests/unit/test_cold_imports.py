"""Local stores must not pay for boto3 at cold start; the Lambda door imports only what it needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO_ROOT

PROBE = """
import sys
from modelship.core.settings import Settings
from modelship.core.service import InferenceService
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


OVERFLOW_PROBE = """
import sys
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
service = InferenceService.from_settings(Settings(store_uri=sys.argv[1]))
statuses = []
for datatype, data in (("FP16", "[1e5, -1e5, 1]"), ("FP16", "[300, 300, 1]"), ("FP32", "[3e38, 3e38, 1]")):
    body = ('{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "%s", "data": %s}]}' % (datatype, data))
    response = service.handle("POST", f"/v2/models/identity_{datatype.lower()}/infer", {}, body.encode())
    statuses.append(str(response.status))
print(" ".join(statuses))
"""


def test_numpys_overflow_warning_is_answered_not_logged(populated_store: Path) -> None:
    """An overflowing cast is a 400 for the client; the core's own filter keeps numpy's warnings (the
    cast's, and the finiteness check's dot product) out of the logs. Run outside pytest, whose
    filterwarnings setting would hide a filter that no longer matches the module, with every warning an
    error."""
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", OVERFLOW_PROBE, str(populated_store)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT / "functions",
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    # The overflowing casts are 400s; the large finite values (whose dot product overflows) are served.
    assert completed.stdout.strip() == "400 200 200"
