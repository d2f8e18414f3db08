"""The figures this tier writes under build/reliability/ as JSON, for a report script to collect.

fuzz.json (examples run, statuses, known-bug hits and allocation peaks per property, and each test's
outcome), load.json (counts, latency percentiles, RSS) and bandit.json (findings).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import REPO_ROOT

FIGURES_DIR = REPO_ROOT / "build" / "reliability"


def write_figures(name: str, document: dict[str, Any]) -> Path:
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    path = FIGURES_DIR / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


@dataclass
class PropertyStats:
    """What one property saw: every call of its body counts (generation, shrinking and replay alike)."""

    examples: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    # The start of each error message, to show which checks the examples reached.
    errors: Counter[str] = field(default_factory=Counter)
    known_bug_hits: Counter[str] = field(default_factory=Counter)
    max_peak_bytes: int = 0
    max_peak_ratio: float = 0.0
    max_peak_call: str = ""
    # The largest peak of a call over the bound that a known bug excused.
    tolerated_peak_ratio: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "statuses": dict(sorted(self.statuses.items())),
            "top_errors": dict(self.errors.most_common(12)),
            "known_bug_hits": dict(sorted(self.known_bug_hits.items())),
            "max_peak_bytes": self.max_peak_bytes,
            "max_peak_ratio_to_bound_base": round(self.max_peak_ratio, 2),
            "max_peak_call": self.max_peak_call,
            "tolerated_peak_ratio": round(self.tolerated_peak_ratio, 2),
        }


class FuzzFigures:
    """Per-property statistics and per-test outcomes of one pytest session."""

    def __init__(self) -> None:
        self.properties: dict[str, PropertyStats] = {}
        self.outcomes: dict[str, dict[str, str]] = {}
        self.known_bugs_present: list[str] = []
        self._lock = threading.Lock()

    def property(self, name: str) -> PropertyStats:
        with self._lock:
            return self.properties.setdefault(name, PropertyStats())

    def outcome(self, nodeid: str, outcome: str, detail: str) -> None:
        self.outcomes[nodeid] = {"outcome": outcome, "detail": detail[-4000:]}


FUZZ = FuzzFigures()
