"""bandit (pinned in the dev extra) over the code that ships: functions/ and, once it exists,
edge_greengrass/. Every finding must be fixed or justified in place with ``# nosec BXXX: reason``.
Findings go to build/reliability/bandit.json."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

from tests.reliability.figures import write_figures
from tests.support.processes import REPO_ROOT

TARGETS = [name for name in ("functions", "edge_greengrass") if (REPO_ROOT / name).is_dir()]


def test_bandit_finds_nothing_unjustified() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bandit", "--recursive", "--format", "json", "--quiet", *TARGETS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode in (0, 1), completed.stderr
    report = json.loads(completed.stdout)
    findings = [
        {
            "test_id": result["test_id"],
            "test_name": result["test_name"],
            "location": f"{result['filename']}:{result['line_number']}",
            "severity": result["issue_severity"],
            "confidence": result["issue_confidence"],
            "text": result["issue_text"],
            "code": result["code"].strip(),
        }
        for result in report["results"]
    ]
    totals = report["metrics"]["_totals"]
    write_figures(
        "bandit",
        {
            "bandit": version("bandit"),
            "targets": TARGETS,
            "findings": findings,
            "errors": report["errors"],
            "lines_of_code": totals["loc"],
            "nosec_skipped": totals.get("skipped_tests", 0),
        },
    )
    assert not report["errors"], report["errors"]
    assert not findings, json.dumps(findings, indent=2)
