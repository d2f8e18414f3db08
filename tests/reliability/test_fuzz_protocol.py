"""Property-based fuzzing of the protocol parser through ``InferenceService.handle``: valid requests
(JSON, binary, mixed) against onnxruntime, near-valid mutations of them, arbitrary JSON documents,
arbitrary Inference-Header-Content-Length values, and arbitrary routes and methods.

Every property also holds: no unhandled exception and no 500, every non-200 is JSON with an "error"
string, and no call allocates more than MEMORY_FACTOR x max(body, cap) (oracle.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelship.core.service import InferenceService

from tests.reliability.figures import FUZZ, PropertyStats
from tests.reliability.oracle import (
    HEADER_LENGTH,
    KnownBugs,
    ModelSpec,
    Reference,
    ask,
    check_answer,
    check_infer_200,
    check_matches_reference,
)
from tests.reliability.strategies import (
    ENCODINGS,
    encode_json,
    header_values,
    json_values,
    method_strategy,
    mutate_draft,
    route_paths,
    valid_requests,
)

pytestmark = pytest.mark.usefixtures("traced")

SERVED_AND_NOT = ("iris", "add_sub", "identity_bytes", "identity_fp16", "identity_uint64", "broken", "nosuch")


def start(name: str) -> PropertyStats:
    stats = FUZZ.property(name)
    stats.examples += 1
    return stats


def check_any_200(answer: Any, specs: dict[str, ModelSpec]) -> None:
    """A 200 to a request the fuzzer cannot predict is still a well-formed answer of the model named."""
    if answer.status == 200:
        split = answer.header_length
        model = orjson.loads(answer.body[:split] if split is not None else answer.body)["model_name"]
        check_infer_200(answer, specs[model])


@given(data=st.data())
def test_valid_requests_match_onnxruntime(
    fuzz_service: InferenceService,
    specs: dict[str, ModelSpec],
    reference: Reference,
    known_bugs: KnownBugs,
    data: st.DataObject,
) -> None:
    stats = start("protocol.valid_requests")
    request = data.draw(valid_requests(specs))
    body, headers = request.draft.encode()
    answer = ask(fuzz_service, "POST", request.draft.route, headers, body, known_bugs, stats)
    if check_answer(answer, known_bugs, stats):
        check_matches_reference(
            answer, request.spec, request.feeds, request.outputs, request.request_id, reference
        )


@given(data=st.data())
def test_mutated_requests_are_answered(
    fuzz_service: InferenceService, specs: dict[str, ModelSpec], known_bugs: KnownBugs, data: st.DataObject
) -> None:
    stats = start("protocol.mutated_requests")
    request = data.draw(valid_requests(specs))
    draft = data.draw(mutate_draft(request.draft))
    body, headers = draft.encode()
    answer = ask(fuzz_service, "POST", draft.route, headers, body, known_bugs, stats)
    if check_answer(answer, known_bugs, stats):
        check_any_200(answer, specs)


documents = st.one_of(
    json_values,
    json_values.map(lambda value: {"inputs": value}),
    json_values.map(lambda value: {"inputs": [value]}),
    st.tuples(json_values, json_values).map(lambda pair: {"inputs": [pair[0]], "outputs": pair[1]}),
)


@given(
    document=documents,
    encoding=st.sampled_from(ENCODINGS),
    model=st.sampled_from(SERVED_AND_NOT),
    header=st.none() | header_values,
    tail=st.binary(max_size=24),
)
def test_arbitrary_json_documents_are_answered(
    fuzz_service: InferenceService,
    specs: dict[str, ModelSpec],
    known_bugs: KnownBugs,
    document: Any,
    encoding: str,
    model: str,
    header: str | None,
    tail: bytes,
) -> None:
    stats = start("protocol.arbitrary_documents")
    body = encode_json(document, encoding)
    headers = {}
    if header is not None:
        headers[HEADER_LENGTH] = header
        body += tail
    answer = ask(fuzz_service, "POST", f"/v2/models/{model}/infer", headers, body, known_bugs, stats)
    if check_answer(answer, known_bugs, stats):
        check_any_200(answer, specs)


def header_verdict(value: str, exact: int) -> bool | None:
    """Whether ``value`` must be accepted as a header length of ``exact`` (None: either answer is fine).
    Plain ASCII digits, optionally in spaces or tabs, are decided; other whitespace around the exact
    number, or more than 19 digits of it (leading zeros), may go either way; anything else is a 400."""
    plain = value.strip(" \t")
    if plain.isascii() and plain.isdigit() and len(plain) <= 19:
        return int(plain) == exact
    stripped = value.strip()
    if stripped.isascii() and stripped.isdigit() and (stripped.lstrip("0") or "0") == str(exact):
        return None
    return False


@given(data=st.data(), header=header_values)
def test_header_length_values(
    fuzz_service: InferenceService,
    specs: dict[str, ModelSpec],
    reference: Reference,
    known_bugs: KnownBugs,
    data: st.DataObject,
    header: str,
) -> None:
    stats = start("protocol.header_length_values")
    request = data.draw(valid_requests(specs))
    body, headers = request.draft.encode()
    # A JSON-only request is equally valid with the whole body as its JSON part.
    exact = int(headers.get(HEADER_LENGTH, len(body)))
    if data.draw(st.booleans(), label="exact header"):
        header = str(exact)
    answer = ask(fuzz_service, "POST", request.draft.route, {HEADER_LENGTH: header}, body, known_bugs, stats)
    if not check_answer(answer, known_bugs, stats):
        return
    verdict = header_verdict(header, exact)
    if verdict is True or (verdict is None and answer.status == 200):
        check_matches_reference(
            answer, request.spec, request.feeds, request.outputs, request.request_id, reference
        )
    elif verdict is False:
        assert answer.status == 400, (header[:40], answer.status, answer.body[:300])


@given(data=st.data())
def test_json_booleans_in_numeric_data_are_refused(
    fuzz_service: InferenceService, specs: dict[str, ModelSpec], known_bugs: KnownBugs, data: st.DataObject
) -> None:
    """JSON true/false where a number belongs is a 400 (the core once read them as 1/0)."""
    stats = start("protocol.json_booleans_in_numeric_data")
    numeric = {
        name: spec
        for name, spec in specs.items()
        if all(t.datatype not in ("BOOL", "BYTES") for t in spec.inputs)
    }
    request = data.draw(valid_requests(numeric, binary_inputs=False, min_batch=1))
    entries = request.draft.document["inputs"]
    entry = entries[data.draw(st.integers(0, len(entries) - 1), label="input")]
    flat = np.asarray(entry["data"], dtype=object).ravel().tolist()
    position = data.draw(st.integers(0, len(flat) - 1), label="position")
    flat[position] = data.draw(st.booleans(), label="boolean")
    entry["data"] = flat
    body, headers = request.draft.encode()
    answer = ask(fuzz_service, "POST", request.draft.route, headers, body, known_bugs, stats)
    if not check_answer(answer, known_bugs, stats):
        return
    if answer.status == 200 and "json-bool-in-numeric-data" in known_bugs.present:
        stats.known_bug_hits["json-bool-in-numeric-data"] += 1
        return
    assert answer.status == 400, answer.body[:300]


@given(
    method=method_strategy,
    path=route_paths,
    body=st.just(b"") | json_values.map(encode_json),
    header=st.none() | header_values,
)
def test_arbitrary_routes_and_methods(
    fuzz_service: InferenceService,
    known_bugs: KnownBugs,
    method: str,
    path: str,
    body: bytes,
    header: str | None,
) -> None:
    stats = start("protocol.routes_and_methods")
    headers = {HEADER_LENGTH: header} if header is not None else {}
    answer = ask(fuzz_service, method, path, headers, body, known_bugs, stats)
    check_answer(answer, known_bugs, stats)
