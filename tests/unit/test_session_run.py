"""LoadedModel.run calls onnxruntime's compiled run directly: the same results as the public
``InferenceSession.run``, the runs counted while in flight, and an input onnxruntime refuses still a 400."""

from __future__ import annotations

import numpy as np
import pytest
from modelship.core.deadlines import RunWatchdog
from modelship.core.errors import BadRequest
from modelship.core.repository import describe_model
from modelship.core.sessions import LoadedModel, load_model

from tests.support.models import add_sub_model

pytestmark = pytest.mark.unit


def _loaded(watchdog: RunWatchdog) -> LoadedModel:
    data = add_sub_model()
    return load_model(describe_model(data, "addsub", 1, None), data, watchdog, run_timeout=5.0)


def test_a_run_gives_what_the_public_session_run_gives() -> None:
    model = _loaded(RunWatchdog())
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, dtype=np.float32)
    ours = model.run(["diff", "sum"], {"a": a, "b": b})
    public = model.session.run(["diff", "sum"], {"a": a, "b": b})
    assert [array.tolist() for array in ours] == [array.tolist() for array in public]
    assert ours[1].tolist() == (a + b).tolist()


def test_runs_are_counted_while_in_flight_and_released_after_a_refusal() -> None:
    watchdog = RunWatchdog()
    model = _loaded(watchdog)
    ticket = watchdog.start(5.0, model)
    assert model.runs_in_flight == 1 and watchdog.in_flight() == 1
    watchdog.finish(ticket)
    assert model.runs_in_flight == 0
    with pytest.raises(BadRequest, match="onnxruntime rejected the input"):
        # Batch sizes that disagree pass signature checks but not the graph: the request's fault.
        model.run(["sum"], {"a": np.zeros((2, 4), np.float32), "b": np.zeros((3, 4), np.float32)})
    assert model.runs_in_flight == 0 and watchdog.in_flight() == 0


def test_a_missing_input_is_refused_as_the_requests_fault() -> None:
    model = _loaded(RunWatchdog())
    with pytest.raises(BadRequest, match="onnxruntime rejected the input"):
        model.run(["sum"], {"a": np.zeros((1, 4), np.float32)})
    assert model.runs_in_flight == 0


def test_a_remembered_binary_response_header_still_respects_the_response_limit() -> None:
    from modelship.core.protocol import decode_infer_request, encode_infer_response
    from modelship.tools.client import encode_request

    model = _loaded(RunWatchdog())
    tensors = {"a": np.ones((2, 4), np.float32), "b": np.ones((2, 4), np.float32)}
    body, headers = encode_request(tensors, {"a": "FP32", "b": "FP32"}, binary=True, outputs=["sum"])
    header_length = int(headers["Inference-Header-Content-Length"])
    sizes = []
    # The first request makes the plan; the second runs on it and remembers its response header; the
    # third answers with that header.
    for round_index in range(3):
        call = decode_infer_request(model, body, header_length)
        assert (call.plan is not None) == (round_index > 0)
        payload, json_length = encode_infer_response(
            model, call, model.run(call.output_names, call.feeds), 4096
        )
        assert (
            json_length is not None and np.frombuffer(payload[json_length:], np.float32).tolist() == [2.0] * 8
        )
        sizes.append(len(payload))
    assert sizes[0] == sizes[1] == sizes[2]
    call = decode_infer_request(model, body, header_length)
    assert call.plan is not None and call.plan.response_headers
    with pytest.raises(BadRequest, match=f"would be {sizes[0]} bytes, over the {sizes[0] - 1}-byte"):
        encode_infer_response(model, call, model.run(call.output_names, call.feeds), sizes[0] - 1)
