"""The reliability tier: property-based fuzzing of the core and the API Gateway door, a load test of
``modelship serve``, and bandit over functions/. Figures go to build/reliability/*.json.

Hypothesis profiles (HYPOTHESIS_PROFILE selects one; "ci" is the default):
  ci    200 examples per property, derandomized (the same examples every run), no example database
  long  5,000 examples per property, random, for ``make fuzz``; failures are kept in
        build/reliability/hypothesis-db so a rerun replays them first
HYPOTHESIS_MAX_EXAMPLES overrides either profile's count.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
from modelship.doors.apigw import handle_event

from tests.reliability.figures import FIGURES_DIR, FUZZ, write_figures
from tests.reliability.oracle import (
    FUZZ_CAP,
    KNOWN_BUGS,
    MEMORY_FACTOR,
    KnownBugs,
    ModelSpec,
    Reference,
    model_spec,
    probe_known_bugs,
    tracing,
)
from tests.support.models import SAMPLE_BY_DATATYPE

SERVED_MODELS = ("iris", "add_sub", *(f"identity_{datatype.lower()}" for datatype in SAMPLE_BY_DATATYPE))

# Hypothesis's own caches go under build/ with the figures, not into a .hypothesis/ at the repo root.
set_hypothesis_home_dir(str(FIGURES_DIR / "hypothesis-home"))
_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "long",
    max_examples=5_000,
    deadline=None,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(FIGURES_DIR / "hypothesis-db")),
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
# HYPOTHESIS_MAX_EXAMPLES overrides the profile's count (e.g. a shorter or longer `make fuzz`).
if os.environ.get("HYPOTHESIS_MAX_EXAMPLES"):
    settings.register_profile(
        f"{PROFILE}-custom",
        settings.get_profile(PROFILE),
        max_examples=int(os.environ["HYPOTHESIS_MAX_EXAMPLES"]),
    )
    settings.load_profile(f"{PROFILE}-custom")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)
            if PROFILE != "ci" and "/test_fuzz_" in str(item.fspath):
                # A long run takes many minutes per property: no per-test timeout (pytest-timeout).
                item.add_marker(pytest.mark.timeout(0))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" or not report.passed:
        outcome = "xfailed" if report.skipped and hasattr(report, "wasxfail") else report.outcome
        FUZZ.outcome(item.nodeid, outcome, report.longreprtext if report.failed else "")
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not FUZZ.properties:
        return
    fuzz_outcomes = {nodeid: o for nodeid, o in FUZZ.outcomes.items() if "/test_fuzz_" in nodeid}
    write_figures(
        "fuzz",
        {
            "profile": PROFILE,
            "hypothesis": hypothesis.__version__,
            "max_examples": settings().max_examples,
            "request_cap_bytes": FUZZ_CAP,
            "memory_bound": f"peak traced allocation per call < {MEMORY_FACTOR} x max(body, cap)",
            "known_bugs": {
                bug.id: {
                    "description": bug.description,
                    "found_here": bug.found_here,
                    "reproduces": bug.id in FUZZ.known_bugs_present,
                }
                for bug in KNOWN_BUGS
            },
            "properties": {name: stats.to_json() for name, stats in sorted(FUZZ.properties.items())},
            "examples_total": sum(stats.examples for stats in FUZZ.properties.values()),
            "tests": fuzz_outcomes,
            "failures": sorted(n for n, o in fuzz_outcomes.items() if o["outcome"] == "failed"),
        },
    )


@pytest.fixture(scope="session")
def fuzz_service(populated_store: Path, tmp_path_factory: pytest.TempPathFactory) -> InferenceService:
    """One service for every property (function-scoped fixtures do not mix with @given): every model
    preloaded, and a 64 KiB request cap."""
    settings_ = Settings(
        store_uri=str(populated_store),
        cache_dir=tmp_path_factory.mktemp("fuzz-cache"),
        preload=tuple((name, None) for name in SERVED_MODELS),
        max_request_bytes=FUZZ_CAP,
    )
    service = InferenceService.from_settings(settings_)
    service.preload()
    assert not service.preload_errors, service.preload_errors
    return service


@pytest.fixture(scope="session")
def specs(fuzz_service: InferenceService) -> dict[str, ModelSpec]:
    return {name: model_spec(fuzz_service, name) for name in SERVED_MODELS}


@pytest.fixture(scope="session")
def reference(populated_store: Path) -> Reference:
    return Reference(populated_store, SERVED_MODELS)


@pytest.fixture(scope="session")
def known_bugs(fuzz_service: InferenceService) -> Iterator[KnownBugs]:
    present = probe_known_bugs(fuzz_service, handle_event)
    FUZZ.known_bugs_present = sorted(present)
    # Every bug in KNOWN_BUGS is fixed: one that reproduces again is a regression, never tolerated.
    assert not present, f"fixed bugs reproduce again: {sorted(present)}"
    bugs = KnownBugs(present)
    bugs.install()
    yield bugs
    bugs.uninstall()


@pytest.fixture(scope="module")
def traced() -> Iterator[None]:
    """tracemalloc on for a fuzz module (it slows every allocation, so not for the load test)."""
    with tracing():
        yield
