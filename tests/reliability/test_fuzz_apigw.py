"""Property-based fuzzing of the API Gateway door, ``modelship.doors.apigw.handle_event``: arbitrary
events (any JSON, any field of any type), text bodies with lone surrogates, base64 flags and bodies
(valid, corrupted, or not base64 at all), and valid requests through the door against onnxruntime."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pybase64
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelship.core.service import InferenceService
from modelship.doors.apigw import handle_event

from tests.reliability.figures import FUZZ, PropertyStats
from tests.reliability.oracle import (
    FUZZ_CAP,
    HEADER_LENGTH,
    Answer,
    KnownBugs,
    ModelSpec,
    Reference,
    check_answer,
    check_matches_reference,
    measured,
)
from tests.reliability.strategies import (
    any_text,
    header_values,
    json_scalars,
    json_values,
    method_strategy,
    route_paths,
    valid_requests,
)

pytestmark = pytest.mark.usefixtures("traced")

EVENT_KEYS = ("httpMethod", "path", "headers", "body", "isBase64Encoded", "multiValueHeaders", "resource")
HEADER_NAMES = (HEADER_LENGTH, "Inference-Header-Content-Length", "Content-Type", "content-length")


def start(name: str) -> PropertyStats:
    stats = FUZZ.property(name)
    stats.examples += 1
    return stats


def send(
    service: InferenceService, event: Any, known: KnownBugs, stats: PropertyStats
) -> tuple[dict[str, Any] | None, Answer | None]:
    """The event through the door, measured; the proxy result checked for what Lambda and API Gateway
    need (a JSON-serialisable dict, a UTF-8 text body, base64 exactly when flagged), as an Answer.
    The Answer is None when a known bug raised or answered 500 (tolerated while it reproduces)."""
    body = event.get("body") if isinstance(event, dict) else None
    length = len(body) if isinstance(body, str) else 0
    known.reset()
    try:
        result = measured(
            lambda: handle_event(service, event),
            length,
            FUZZ_CAP,
            stats,
            lambda: f"event {str(event)[:280]}",
        )
    except Exception as error:
        if known.tolerated_raise(error, stats):
            return None, None
        raise
    assert isinstance(result, dict)
    assert isinstance(result["statusCode"], int)
    assert isinstance(result["isBase64Encoded"], bool)
    headers = result["headers"]
    assert isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
    assert isinstance(result["body"], str)
    json.dumps(result)
    text = result["body"]
    raw = base64.b64decode(text, validate=True) if result["isBase64Encoded"] else text.encode("utf-8")
    answer = Answer(result["statusCode"], {k.lower(): v for k, v in headers.items()}, raw)
    if not check_answer(answer, known, stats):
        return result, None
    return result, answer


text_bodies = st.one_of(
    st.just(""),
    any_text,
    st.binary(max_size=32).map(lambda raw: base64.b64encode(raw).decode()),
    json_values.map(json.dumps),
)
header_maps = st.dictionaries(st.sampled_from(HEADER_NAMES) | any_text, any_text | header_values, max_size=3)
# Events the door takes (method, path and headers of the right types), so the core sees their headers
# and bodies; loosely typed ones, where any field may be any JSON; and anything at all.
well_typed_events = st.fixed_dictionaries(
    {"httpMethod": method_strategy, "path": route_paths},
    optional={
        "headers": st.none() | header_maps,
        "body": st.none() | text_bodies,
        "isBase64Encoded": st.booleans() | json_scalars,
        "multiValueHeaders": json_values,
    },
)
loosely_typed_events = st.fixed_dictionaries(
    {"httpMethod": method_strategy | json_scalars, "path": route_paths | json_scalars},
    optional={
        "headers": st.none() | header_maps | st.dictionaries(any_text, json_values, max_size=3) | json_values,
        "body": st.none() | text_bodies | json_values,
        "isBase64Encoded": st.booleans() | json_scalars,
        "requestContext": json_values,
    },
)
events = st.one_of(
    well_typed_events,
    well_typed_events,
    well_typed_events,
    loosely_typed_events,
    json_values,
    st.dictionaries(st.sampled_from(EVENT_KEYS) | any_text, json_values, max_size=6),
)


@given(event=events)
def test_arbitrary_events_are_answered(
    fuzz_service: InferenceService, known_bugs: KnownBugs, event: Any
) -> None:
    stats = start("apigw.arbitrary_events")
    send(fuzz_service, event, known_bugs, stats)


@given(
    data=st.data(),
    text=any_text,
    splice=st.integers(0, 1 << 16),
    flag=st.sampled_from([False, None, 0, ""]),
)
def test_text_bodies_with_lone_surrogates(
    fuzz_service: InferenceService,
    specs: dict[str, ModelSpec],
    known_bugs: KnownBugs,
    data: st.DataObject,
    text: str,
    splice: int,
    flag: Any,
) -> None:
    """A text body (not base64) with any code points, lone surrogates included, alone or spliced into
    a valid request: a 4xx, never an exception."""
    stats = start("apigw.text_bodies")
    request = data.draw(valid_requests(specs, binary_inputs=False))
    body, _ = request.draft.encode()
    document = body.decode("utf-8")
    position = splice % (len(document) + 1)
    surrogate = data.draw(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), label="surrogate")
    choices = [text, document[:position] + surrogate + document[position:], surrogate + text]
    event = {
        "httpMethod": "POST",
        "path": request.spec.route,
        "headers": {},
        "body": data.draw(st.sampled_from(choices), label="body"),
    }
    if flag is not None:
        event["isBase64Encoded"] = flag
    send(fuzz_service, event, known_bugs, stats)


@given(data=st.data(), how=st.sampled_from(["exact"] * 4 + ["text", "corrupt"]))
def test_valid_requests_through_the_door_match_onnxruntime(
    fuzz_service: InferenceService,
    specs: dict[str, ModelSpec],
    reference: Reference,
    known_bugs: KnownBugs,
    data: st.DataObject,
    how: str,
) -> None:
    """Binary requests come base64-encoded (binaryMediaTypes), JSON ones as text or base64. A corrupted
    base64 body is a 400 naming base64, unless the corruption happens to leave valid base64."""
    stats = start("apigw.valid_requests")
    request = data.draw(valid_requests(specs))
    body, headers = request.draft.encode()
    encoded = pybase64.b64encode(body).decode("ascii")
    is_base64 = True
    if how == "text" and not request.draft.binary:
        encoded, is_base64 = body.decode("utf-8"), False
    elif how == "corrupt":
        position = data.draw(st.integers(0, len(encoded)), label="position")
        insert = data.draw(
            st.sampled_from(["=", "-", "_", " ", "\n", "é", "\ud800", "A", "=="]), label="insert"
        )
        cut = data.draw(st.integers(0, 2), label="cut")
        encoded = encoded[:position] + insert + encoded[position + cut :]
    event = {
        "httpMethod": "POST",
        "path": request.spec.route,
        "headers": {
            ("Inference-Header-Content-Length" if k == HEADER_LENGTH else k): v for k, v in headers.items()
        },
        "body": encoded,
        "isBase64Encoded": is_base64,
    }
    _, answer = send(fuzz_service, event, known_bugs, stats)
    if answer is None:
        return
    decoded: bytes | None = body
    if is_base64:
        try:
            decoded = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            decoded = None
    if decoded is None:
        assert answer.status == 400 and "base64" in answer.error(), (answer.status, answer.body[:200])
    elif decoded == body:
        check_matches_reference(
            answer, request.spec, request.feeds, request.outputs, request.request_id, reference
        )
