"""A binary request whose JSON header was seen before skips its parsing (protocol._Plan): it must answer
exactly as the first time, and still check everything that depends on the binary data or the method."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import orjson
from modelship.core import protocol
from modelship.core.service import InferenceService

from tests.support.models import SAMPLE_BY_DATATYPE
from tests.support.oip import binary_request, read_response

HEADER = "inference-header-content-length"


def _infer(
    service: InferenceService, name: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> Any:
    return service.handle(method, f"/v2/models/{name}/infer", headers, body)


def _binary_out(array: np.ndarray, datatype: str) -> tuple[bytes, dict[str, str]]:
    return binary_request({"x": (array, datatype)}, parameters={"binary_data_output": True})


def test_a_repeated_header_answers_as_the_first_time(service: InferenceService) -> None:
    for datatype in ("FP32", "INT64", "BOOL", "UINT8"):
        sample = SAMPLE_BY_DATATYPE[datatype]
        body, headers = _binary_out(sample, datatype)
        answers = [_infer(service, f"identity_{datatype.lower()}", body, headers) for _ in range(3)]
        assert [answer.status for answer in answers] == [200, 200, 200]
        assert answers[0].body == answers[1].body == answers[2].body
        _, arrays = read_response(answers[2].body, answers[2].header_length)
        np.testing.assert_array_equal(arrays["y"], sample)
        # New data under the same header is read, not remembered.
        other = np.ascontiguousarray(sample[::-1])
        body_2, _ = _binary_out(other, datatype)
        _, arrays = read_response(
            _infer(service, f"identity_{datatype.lower()}", body_2, headers).body,
            answers[0].header_length,
        )
        np.testing.assert_array_equal(arrays["y"], other)


def test_data_checks_still_run_on_a_remembered_header(service: InferenceService) -> None:
    sample = SAMPLE_BY_DATATYPE["BOOL"]
    body, headers = _binary_out(sample, "BOOL")
    assert _infer(service, "identity_bool", body, headers).status == 200
    assert _infer(service, "identity_bool", body, headers).status == 200
    split = int(headers[HEADER])
    bad = body[:split] + b"\x02" + body[split + 1 :]
    answer = _infer(service, "identity_bool", bad, headers)
    assert answer.status == 400 and b"BOOL elements must be the bytes 0 or 1" in answer.body
    # A binary section of another length is refused with the first-time message.
    for broken in (body + b"\x00", body[:-1]):
        first = _infer(service, "identity_bool", broken, headers)
        assert first.status == 400
        assert (
            orjson.loads(first.body)["error"]
            == orjson.loads(_infer(service, "identity_bool", broken, headers).body)["error"]
        )
    # The method is still checked on a path already routed.
    assert _infer(service, "identity_bool", body, headers, method="GET").status == 405


def test_a_header_is_remembered_for_its_own_model_only(service: InferenceService) -> None:
    # Plans of earlier tests' models may sit under a recycled id(); a lookup ignores them (their bindings
    # are not this model's), but they would muddle the check below.
    protocol._plans.clear()
    sample = SAMPLE_BY_DATATYPE["FP32"]
    body, headers = _binary_out(sample, "FP32")
    assert _infer(service, "identity_fp32", body, headers).status == 200
    # The same header bytes sent to a model with other inputs are parsed, and refused, for that model.
    answer = _infer(service, "add_sub", body, headers)
    assert answer.status == 400 and b"unknown input 'x'" in answer.body
    model = service.lifecycle.get("identity_fp32", None)
    plans = [plan for (model_id, _), plan in protocol._plans.items() if model_id == id(model)]
    assert plans and all(plan.bindings is model.inputs for plan in plans)


def test_the_memo_is_bounded(service: InferenceService) -> None:
    protocol._plans.clear()
    for batch in range(1, protocol.MAX_PLANS + 20):
        array = np.zeros((batch, 3), dtype=np.float32)
        body, headers = _binary_out(array, "FP32")
        assert _infer(service, "identity_fp32", body, headers).status == 200
    assert 0 < len(protocol._plans) <= protocol.MAX_PLANS


def test_a_plan_left_by_another_model_under_a_recycled_id_is_not_used(service: InferenceService) -> None:
    # id() of a model that was evicted and freed may be reused by the next model loaded: a plan stored
    # under it belongs to the old model (another signature) and must be parsed afresh, not trusted.
    protocol._plans.clear()
    sample = SAMPLE_BY_DATATYPE["FP32"]
    body, headers = _binary_out(sample, "FP32")
    assert _infer(service, "identity_fp32", body, headers).status == 200
    model = service.lifecycle.get("identity_fp32", None)
    other = service.lifecycle.get("add_sub", None)
    key = (id(model), body[: int(headers[HEADER])])
    # The plan as the other model would have left it under this id.
    protocol._plans[key] = dataclasses.replace(
        protocol._plans[key], bindings=other.inputs, output_datatypes=other.output_datatypes
    )
    answer = _infer(service, "identity_fp32", body, headers)
    assert answer.status == 200
    _, arrays = read_response(answer.body, answer.header_length)
    np.testing.assert_array_equal(arrays["y"], sample)
    # Parsed afresh for this model, and remembered for it.
    assert protocol._plans[key].bindings is model.inputs
