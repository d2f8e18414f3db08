"""Bugs this tier found in the core, each kept as its minimal example once fixed, so it stays fixed.

classification-amplification: a 64 KiB binary UINT8 request asking for the top 3 classes as a binary
output allocated ~20 MB (~316x the body); the core now bounds classification entries and encodes BYTES
into one buffer."""

from __future__ import annotations

import tracemalloc

from modelship.core.service import InferenceService

from tests.reliability.oracle import FUZZ_CAP, MEMORY_FACTOR, classification_amplification_example, tracing


def test_classification_output_allocations_stay_bounded(fuzz_service: InferenceService) -> None:
    path, body, headers = classification_amplification_example()
    with tracing():
        fuzz_service.handle("POST", path, headers, body)  # warm: first-call allocations do not count
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        response = fuzz_service.handle("POST", path, headers, body)
        peak = tracemalloc.get_traced_memory()[1] - before
    assert response.status in (200, 400, 413)
    assert peak < MEMORY_FACTOR * max(len(body), FUZZ_CAP), f"{peak} bytes, {peak / len(body):.0f}x the body"
