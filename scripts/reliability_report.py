"""Write docs/reliability.md from what `make reliability` measured (build/reliability/).

Reads the JUnit reports of each part (bad requests per door, hostile models, HTTP hardening, S3 faults)
and the figures the reliability tier wrote (fuzz.json, load.json, bandit.json). The LocalStack door's
bad requests come from the last `make integration` run (build/test-reports/integration.xml) when there
is one: that door needs LocalStack, which `make reliability` does not start.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "build" / "reliability"
INTEGRATION_REPORT = ROOT / "build" / "test-reports" / "integration.xml"
DOCUMENT = ROOT / "docs" / "reliability.md"

# Which test runs the shared bad-request table (tests/support/bad_requests.py) through which door.
BAD_REQUEST_DOORS = {
    "the core (InferenceService.handle)": "test_bad_request_gets_json_error_and_server_survives",
    "the Lambda door (API Gateway proxy events)": "test_bad_request_through_api_gateway_events",
    "the local HTTP door (`modelship serve`, a real subprocess)": "test_bad_request_over_http",
    "the LocalStack deployment (API Gateway → Lambda)": "test_bad_requests_get_json_errors",
}


@dataclass
class Case:
    file: str
    name: str
    outcome: str  # passed, failed, skipped


def read_cases(report: Path) -> list[Case]:
    cases = []
    # Our own pytest's reports, written by this run: not untrusted input.
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "xfailed" if "xfail" in (child.get("type") or "") else "skipped"
        cases.append(Case(case.get("classname", ""), case.get("name", ""), outcome))
    return cases


def load_json(name: str) -> dict[str, Any] | None:
    path = FIGURES / name
    return json.loads(path.read_text()) if path.is_file() else None


def tally(cases: list[Case]) -> str:
    counts = Counter(case.outcome for case in cases)
    return ", ".join(
        f"{counts[key]} {key}" for key in ("passed", "failed", "xfailed", "skipped") if counts[key]
    )


def section_bad_requests(cases: list[Case], integration: list[Case]) -> list[str]:
    lines = [
        "## Bad requests, per door",
        "",
        'Each case of `tests/support/bad_requests.py` must get its status, a JSON `{"error"}` body that '
        "names the problem, and `/v2/health/live` must answer 200 after it.",
        "",
        "| door | cases | answered as expected |",
        "| --- | ---: | ---: |",
    ]
    for door, test in BAD_REQUEST_DOORS.items():
        pool = integration if "LocalStack" in door else cases
        run = [case for case in pool if case.name.startswith(test + "[")]
        if not run:
            previous = _previous_row(door)
            lines.append(previous or f"| {door} | not run | (run `make integration` first) |")
            continue
        passed = sum(case.outcome == "passed" for case in run)
        lines.append(f"| {door} | {len(run)} | {passed} |")
    return [*lines, ""]


def _previous_row(door: str) -> str | None:
    """The door's row as the document had it: LocalStack's figures come from `make integration`, which
    `make reliability` does not run, so a run without its report keeps the last one it saw."""
    if not DOCUMENT.is_file():
        return None
    for line in DOCUMENT.read_text().splitlines():
        if line.startswith(f"| {door} |") and "not run" not in line:
            return line.rstrip(" |") + " (from the last `make integration`) |" if "last" not in line else line
    return None


def section_tests(title: str, intro: str, cases: list[Case], files: tuple[str, ...]) -> list[str]:
    chosen = [case for case in cases if any(case.file.endswith(name) for name in files)]
    lines = [f"## {title}", "", intro, "", f"{len(chosen)} tests: {tally(chosen) or 'none run'}.", ""]
    failed = [case for case in chosen if case.outcome == "failed"]
    lines += [f"- FAILED: `{case.file}::{case.name}`" for case in failed]
    return [*lines, ""] if failed else lines


def section_fuzz(fuzz: dict[str, Any] | None) -> list[str]:
    lines = ["## Property-based fuzzing (hypothesis)", ""]
    if fuzz is None:
        return [*lines, "Not run.", ""]
    properties = fuzz.get("properties", {})
    lines += [
        f"Profile `{fuzz.get('profile')}` (hypothesis {fuzz.get('hypothesis')}): "
        f"{fuzz.get('examples_total', 0)} examples over {len(properties)} properties, "
        f"{len(fuzz.get('failures', []))} failures. Bound: {fuzz.get('memory_bound')}, "
        f"with a request cap of {fuzz.get('request_cap_bytes')} bytes.",
        "",
        "| property | examples | largest traced allocation (bytes) |",
        "| --- | ---: | ---: |",
    ]
    for name, figures in sorted(properties.items()):
        lines.append(f"| {name} | {figures.get('examples', 0)} | {figures.get('max_peak_bytes', '')} |")
    return [*lines, ""]


def section_load(load: dict[str, Any] | None) -> list[str]:
    lines = ["## Load (127.0.0.1, bounded)", ""]
    if load is None:
        return [*lines, "Not run.", ""]
    latency, requests, rss = load.get("latency", {}), load.get("requests", {}), load.get("rss_kib", {})
    reload = load.get("reload", {})
    every, good = latency.get("all", {}), latency.get("good", {})
    return [
        *lines,
        f"- {requests.get('completed')} requests ({requests.get('good')} good, {requests.get('bad')} bad; "
        f"{requests.get('new_connection')} on new connections) at concurrency {load.get('concurrency')} in "
        f"{load.get('duration_s')} s, {load.get('throughput_rps')} requests/s; by status: "
        f"{requests.get('by_status')}.",
        f"- A model unload and load in the middle (request {reload.get('at_request')}): "
        f"{reload.get('statuses')}, {reload.get('took_ms')} ms.",
        f"- Wrong answers: {load.get('wrong_answers')}; 5xx for good requests: {load.get('good_5xx')}.",
        f"- Latency: p50 {every.get('p50_ms')} ms, p99 {every.get('p99_ms')} ms; good requests p99 "
        f"{good.get('p99_ms')} ms.",
        f"- Server RSS: {rss.get('before')} KiB before, {rss.get('after')} KiB after "
        f"({rss.get('growth')} KiB of growth; the bound is {rss.get('bound')} KiB).",
        "",
    ]


def section_bandit(bandit: dict[str, Any] | None) -> list[str]:
    lines = ["## bandit", ""]
    if bandit is None:
        return [*lines, "Not run.", ""]
    findings = bandit.get("findings", [])
    lines.append(
        f"bandit {bandit.get('bandit', '')} over {', '.join(bandit.get('targets', []))} "
        f"({bandit.get('lines_of_code')} lines): {len(findings)} findings; "
        f"{bandit.get('nosec_skipped')} exceptions, each marked `# nosec` with its reason in place."
    )
    return [*lines, ""]


def main() -> int:
    cases: list[Case] = []
    for report in sorted(FIGURES.glob("junit-*.xml")):
        cases += read_cases(report)
    integration = read_cases(INTEGRATION_REPORT) if INTEGRATION_REPORT.is_file() else []
    if not cases:
        print("no reports in build/reliability: run `make reliability`", file=sys.stderr)
        return 1
    lines = [
        "# Reliability and security: what was tried, and what held",
        "",
        f"Written by `make reliability` on {datetime.now(UTC).date().isoformat()}; every figure below comes "
        "from that run on this machine (2 cores). Traffic went only to 127.0.0.1.",
        "",
        *section_bad_requests(cases, integration),
        *section_tests(
            "Hostile models",
            "External data in every place a tensor can sit, endless warm-ups and runs, memory bombs, "
            "amplified outputs, tensors of any rank, models without inputs, truncated, flipped, empty and "
            "junk files, graphs nested too deep, and a broken newer version: each refused or contained "
            "with a clear error while everything else keeps serving (tests/unit/test_hostile_models.py, "
            "test_isolation.py).",
            cases,
            ("test_hostile_models", "test_isolation"),
        ),
        *section_tests(
            "The HTTP door under hostile clients",
            "Request smuggling, slow and oversized headers and bodies, connection floods and caps, "
            "descriptor exhaustion, absurd Content-Length values, resets, and SIGTERM during a run "
            "(tests/functional/test_http_hardening.py, test_local_server.py).",
            cases,
            ("test_http_hardening", "test_local_server"),
        ),
        *section_tests(
            "Faults injected into S3 (moto behind a fault proxy)",
            "Refused, hanging, delayed and trickling S3 at start and while warm; objects replaced and "
            "deleted; paced retries (tests/functional/test_s3_faults.py).",
            cases,
            ("test_s3_faults",),
        ),
        *section_fuzz(load_json("fuzz.json")),
        *section_load(load_json("load.json")),
        *section_bandit(load_json("bandit.json")),
    ]
    DOCUMENT.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {DOCUMENT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
