"""Hostile models are refused or contained with a clear error, and the server keeps serving the rest.

Each family comes from tests/support/hostile_models.py. Where a model is refused at push, the same bytes
are also published straight into the store, as someone with write access to it could, to show that
loading refuses them too.
"""

from __future__ import annotations

import hashlib
import threading
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from modelship.core.errors import InvalidModel
from modelship.core.manifest import Manifest, TensorSpec
from modelship.core.repository import ModelRepository, manifest_key, model_key
from modelship.core.service import InferenceService
from modelship.core.settings import Settings

from tests.support import hostile_models
from tests.support.models import identity_model, write_model

SECRET = b"TOP-SECRET-bytes"
UINT8_16 = (TensorSpec("x", "UINT8", (16,)),)


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    return ModelRepository.open(str(tmp_path / "store"))


def serve(repository: ModelRepository, **settings: object) -> InferenceService:
    return InferenceService(repository, Settings(store_uri=repository.uri, **settings))  # type: ignore[arg-type]


def publish_unchecked(
    repository: ModelRepository,
    name: str,
    data: bytes,
    inputs: tuple[TensorSpec, ...] = UINT8_16,
    outputs: tuple[TensorSpec, ...] = (TensorSpec("y", "UINT8", (16,)),),
    version: int = 1,
) -> None:
    """Write bytes and a matching manifest into the store without asking onnxruntime, as an attacker
    with write access to the bucket would."""
    manifest = Manifest(
        name=name,
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        inputs=inputs,
        outputs=outputs,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    repository.blobs.write(model_key(name, version), data)
    repository.blobs.write(manifest_key(name, version), manifest.dumps())


def error_of(response: object) -> str:
    document = orjson.loads(response.body)  # type: ignore[attr-defined]
    assert set(document) >= {"error"}, document
    return str(document["error"])


def infer_body(inputs: dict[str, tuple[list[Any], list[int], str]]) -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {"name": name, "data": data, "shape": shape, "datatype": datatype}
                for name, (data, shape, datatype) in inputs.items()
            ]
        }
    )


# --- external data: a model must never read a file ---------------------------------------------------


@pytest.mark.parametrize("family", sorted(hostile_models.EXTERNAL_DATA_MODELS))
def test_external_data_is_refused_at_push(repository: ModelRepository, tmp_path: Path, family: str) -> None:
    path = write_model(tmp_path, family, hostile_models.EXTERNAL_DATA_MODELS[family]())
    with pytest.raises(InvalidModel, match="external data"):
        repository.push(path, "hostile")
    assert repository.list_models() == {}


@pytest.mark.parametrize("family", sorted(hostile_models.EXTERNAL_DATA_MODELS))
def test_external_data_is_refused_at_load_and_no_file_is_read(
    repository: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    # The secret sits where onnxruntime would look: a relative path inside the working directory.
    (tmp_path / hostile_models.SECRET_FILE).write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    publish_unchecked(repository, "hostile", hostile_models.EXTERNAL_DATA_MODELS[family]())
    service = serve(repository)
    body = infer_body({"x": ([0] * 16, [16], "UINT8")})
    response = service.handle("POST", "/v2/models/hostile/infer", {}, body)
    assert response.status == 503
    assert "external data" in error_of(response)
    assert SECRET not in response.body
    assert service.handle("GET", "/v2/health/live", {}, b"").status == 200


# --- deadlines: a model that runs forever holds nothing ---------------------------------------------


def test_a_warm_up_that_never_finishes_is_stopped_and_wedges_nothing(
    repository: ModelRepository, tmp_path: Path
) -> None:
    repository.push(write_model(tmp_path, "endless", hostile_models.counting_loop(2**62)), "endless")
    repository.push(write_model(tmp_path, "fine", identity_model("FP32")), "fine")
    service = serve(repository, inference_timeout_seconds=0.5, failure_retry_seconds=60)
    answers: dict[str, int] = {}

    def ask(path: str) -> None:
        answers[path] = service.handle("GET", path, {}, b"").status

    # Metadata and readiness of the endless model, and another model, all at once.
    threads = [
        threading.Thread(target=ask, args=(path,))
        for path in ("/v2/models/endless", "/v2/models/endless/ready", "/v2/models/fine")
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a request is wedged"
    assert time.monotonic() - started < 30
    assert answers == {"/v2/models/endless": 503, "/v2/models/endless/ready": 503, "/v2/models/fine": 200}
    failure = service.lifecycle.failure("endless", 1)
    assert failure is not None and "deadline" in failure.message
    # The failure is remembered, so the next request does not run the model again.
    again = service.handle("GET", "/v2/models/endless", {}, b"")
    assert again.status == 503 and "deadline" in error_of(again)
    assert service.handle("POST", "/v2/repository/models/endless/unload", {}, b"").status == 200
    assert service.lifecycle.watchdog.in_flight() == 0


def test_an_inference_past_its_deadline_is_a_504_and_the_model_keeps_serving(
    repository: ModelRepository, tmp_path: Path
) -> None:
    repository.push(write_model(tmp_path, "counter", hostile_models.counting_loop()), "counter")
    service = serve(repository, inference_timeout_seconds=0.5)
    endless = infer_body({"x": ([1.0], [1], "FP32"), "n": ([2**62], [1], "INT64")})
    response = service.handle("POST", "/v2/models/counter/infer", {}, endless)
    assert response.status == 504
    assert "deadline" in error_of(response)
    quick = service.handle(
        "POST",
        "/v2/models/counter/infer",
        {},
        infer_body({"x": ([1.0], [1], "FP32"), "n": ([3], [1], "INT64")}),
    )
    assert quick.status == 200
    assert orjson.loads(quick.body)["outputs"][0]["data"] == [4.0]


def test_cancel_runs_stops_what_is_in_flight(repository: ModelRepository, tmp_path: Path) -> None:
    repository.push(write_model(tmp_path, "counter", hostile_models.counting_loop()), "counter")
    service = serve(repository, inference_timeout_seconds=60)
    service.lifecycle.get("counter", None)
    answer: list[int] = []
    endless = infer_body({"x": ([1.0], [1], "FP32"), "n": ([2**62], [1], "INT64")})
    worker = threading.Thread(
        target=lambda: answer.append(service.handle("POST", "/v2/models/counter/infer", {}, endless).status)
    )
    worker.start()
    deadline = time.monotonic() + 10
    while service.lifecycle.watchdog.in_flight() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.cancel_runs() == 1
    worker.join(timeout=10)
    assert answer == [503]
    # Later runs are refused at once: the server is shutting down.
    assert service.handle("POST", "/v2/models/counter/infer", {}, endless).status == 503


# --- memory: what a session really costs -------------------------------------------------------------


def test_a_memory_bomb_over_the_budget_is_refused(repository: ModelRepository, tmp_path: Path) -> None:
    bomb = hostile_models.memory_bomb(mebibytes=128)
    assert len(bomb) < 1024, "a few hundred bytes on disk"
    repository.push(write_model(tmp_path, "bomb", bomb), "bomb")
    repository.push(write_model(tmp_path, "fine", identity_model("FP32")), "fine")
    service = serve(repository, session_memory_bytes=64 * 1024 * 1024)
    response = service.handle("GET", "/v2/models/bomb", {}, b"")
    assert response.status == 503
    assert "over the session memory budget" in error_of(response)
    assert service.handle("GET", "/v2/models/fine", {}, b"").status == 200
    assert [model.name for model in service.lifecycle.loaded()] == ["fine"]


def test_the_measured_cost_of_a_session_drives_eviction(repository: ModelRepository, tmp_path: Path) -> None:
    repository.push(write_model(tmp_path, "bomb", hostile_models.memory_bomb(mebibytes=48)), "bomb")
    service = serve(repository, session_memory_bytes=256 * 1024 * 1024)
    model = service.lifecycle.get("bomb", None)
    # Twice the file's size would be under a kilobyte; the folded table is 48 MiB.
    assert model.memory_estimate >= 40 * 1024 * 1024


# --- outputs far larger than the request ------------------------------------------------------------


def test_an_amplified_output_is_refused_before_it_is_encoded(
    repository: ModelRepository, tmp_path: Path
) -> None:
    repository.push(write_model(tmp_path, "amplifier", hostile_models.output_amplifier()), "amplifier")
    service = serve(repository)
    service.lifecycle.get("amplifier", None)
    elements = 10_000_000  # 40 MB of float32 from a one-element request
    tracemalloc.start()
    try:
        response = service.handle(
            "POST", "/v2/models/amplifier/infer", {}, infer_body({"n": ([elements], [1], "INT64")})
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status == 400
    assert "over the 6291456-byte response limit" in error_of(response)
    # The output tensor itself, and no JSON of it (which would be several times larger).
    assert peak < 1.5 * elements * 4


# --- signatures a client could not use --------------------------------------------------------------


def test_a_tensor_of_any_rank_takes_any_shape(repository: ModelRepository, tmp_path: Path) -> None:
    repository.push(write_model(tmp_path, "anyrank", hostile_models.unranked_identity()), "anyrank")
    service = serve(repository)
    metadata = orjson.loads(service.handle("GET", "/v2/models/anyrank", {}, b"").body)
    assert metadata["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1], "parameters": {"any_rank": True}}
    ]
    for shape in ([2, 3], [4], [], [1, 1, 2]):
        count = int(np.prod(shape))
        data = [float(index) for index in range(count)]
        response = service.handle(
            "POST", "/v2/models/anyrank/infer", {}, infer_body({"x": (data, shape, "FP32")})
        )
        assert response.status == 200, response.body
        output = orjson.loads(response.body)["outputs"][0]
        assert (output["shape"], output["data"]) == (shape, data)


def test_a_model_without_inputs_is_refused(repository: ModelRepository, tmp_path: Path) -> None:
    data = hostile_models.no_inputs()
    with pytest.raises(InvalidModel, match="no inputs"):
        repository.push(write_model(tmp_path, "constant", data), "constant")
    publish_unchecked(repository, "constant", data, inputs=(), outputs=(TensorSpec("y", "FP32", (1,)),))
    response = serve(repository).handle("GET", "/v2/models/constant/ready", {}, b"")
    assert response.status == 503 and "no inputs" in error_of(response)


# --- broken and nested files ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated", "flipped", "zero-bytes", "junk"])
def test_broken_files_are_refused_at_push_and_at_load(
    repository: ModelRepository, tmp_path: Path, kind: str
) -> None:
    broken = hostile_models.broken_files(identity_model("UINT8", (16,)))[kind]
    with pytest.raises(InvalidModel):
        repository.push(write_model(tmp_path, kind, broken), "broken")
    if broken:  # a manifest cannot describe zero bytes
        publish_unchecked(repository, "broken", broken)
        response = serve(repository).handle("GET", "/v2/models/broken", {}, b"")
        assert response.status == 503
        assert "Traceback" not in error_of(response) and "/" not in error_of(response).split("cannot")[0]


def test_graphs_nested_too_deep_are_refused_without_exhausting_the_stack(
    repository: ModelRepository, tmp_path: Path
) -> None:
    with pytest.raises(InvalidModel, match="nest more than"):
        repository.push(write_model(tmp_path, "nested", hostile_models.deeply_nested(10_000)), "nested")


# --- a refused model never replaces a good one ------------------------------------------------------


def test_a_broken_newer_version_does_not_replace_the_serving_one(
    repository: ModelRepository, tmp_path: Path
) -> None:
    repository.push(write_model(tmp_path, "m", identity_model("UINT8", (16,))), "m")
    service = serve(repository, version_poll_seconds=0)
    body = infer_body({"x": ([7] * 16, [16], "UINT8")})
    assert orjson.loads(service.handle("POST", "/v2/models/m/infer", {}, body).body)["model_version"] == "1"
    publish_unchecked(repository, "m", hostile_models.external_initializer(), version=2)

    served = service.handle("POST", "/v2/models/m/infer", {}, body)
    assert served.status == 200 and orjson.loads(served.body)["model_version"] == "1"
    # Asked for by number, version 2 says why it is refused.
    refused = service.handle("POST", "/v2/models/m/versions/2/infer", {}, body)
    assert refused.status == 503 and "external data" in error_of(refused)
    # So does an explicit load, which never falls back.
    loaded = service.handle("POST", "/v2/repository/models/m/load", {}, b"")
    assert loaded.status == 503 and "external data" in error_of(loaded)


def test_unload_and_load_during_a_run_cannot_hold_a_second_copy_past_the_budget(
    repository: ModelRepository, tmp_path: Path
) -> None:
    """An unloaded session lives on while a run uses it, and counts against the budget until then."""
    repository.push(write_model(tmp_path, "counter", hostile_models.counting_loop()), "counter")
    service = serve(repository, inference_timeout_seconds=2)
    model = service.lifecycle.get("counter", None)
    service.lifecycle.cache.budget_bytes = model.memory_estimate * 3 // 2  # room for one copy, not two
    endless = infer_body({"x": ([1.0], [1], "FP32"), "n": ([2**62], [1], "INT64")})
    answers: list[int] = []
    run = threading.Thread(
        target=lambda: answers.append(service.handle("POST", "/v2/models/counter/infer", {}, endless).status)
    )
    run.start()
    deadline = time.monotonic() + 10
    while service.lifecycle.watchdog.in_flight() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.handle("POST", "/v2/repository/models/counter/unload", {}, b"").status == 200
    refused = service.handle("POST", "/v2/repository/models/counter/load", {}, b"")
    assert refused.status == 503 and "still finishing runs" in error_of(refused)
    run.join(timeout=30)
    assert answers == [504]
    assert service.lifecycle.cache.retired_bytes() == 0
    # Once the run has ended, its memory is free again (past the remembered failure's short window).
    service.lifecycle.settings = Settings(store_uri=repository.uri, failure_retry_seconds=0)
    assert service.handle("POST", "/v2/repository/models/counter/load", {}, b"").status == 200


def test_classification_of_more_scores_than_it_ranks_is_refused(
    repository: ModelRepository, tmp_path: Path
) -> None:
    """Ranking sorts every score, so its cost follows the output's size, not k."""
    repository.push(write_model(tmp_path, "amplifier", hostile_models.output_amplifier()), "amplifier")
    service = serve(repository)
    body = orjson.dumps(
        {
            "inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [3_000_000]}],
            "outputs": [{"name": "y", "parameters": {"classification": 1}}],
        }
    )
    response = service.handle("POST", "/v2/models/amplifier/infer", {}, body)
    assert response.status == 400
    assert "scores, over the 2097152 that classification ranks" in error_of(response)
