"""Defects found in review, each pinned by a test: concurrency in push, readiness that heals, bounded
memory for unknown models, Lambda's response cap, HEAD, malformed events, hostile store contents."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from modelship.core.errors import Conflict
from modelship.core.repository import ModelRepository, model_key
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
from modelship.doors import apigw

from tests.support.clock import FakeClock
from tests.support.models import identity_model, write_model

INFER_FP32 = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    return ModelRepository.open(str(tmp_path / "store"))


def test_a_losing_concurrent_push_never_overwrites_the_published_version(
    repository: ModelRepository, tmp_path: Path
) -> None:
    winner = repository.push(write_model(tmp_path, "b", identity_model("FP32")), "m", version=1)
    loser_bytes = identity_model("FP32", shape=(1, 3))
    # The loser checked "does version 1 exist?" before the winner published, then goes on to write.
    from modelship.core.repository import describe_model

    loser = describe_model(loser_bytes, "m", 1, None)
    with pytest.raises(Conflict, match="already holds other bytes"):
        repository._publish(loser, loser_bytes)
    assert (tmp_path / "store" / model_key("m", 1)).read_bytes() == identity_model("FP32")
    served = InferenceService(repository, Settings(store_uri=repository.uri))
    assert served.handle("POST", "/v2/models/m/versions/1/infer", {}, INFER_FP32).status == 200
    assert repository.read_manifest("m", 1).sha256 == winner.sha256


def test_auto_versioning_moves_past_a_version_taken_concurrently(
    repository: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = repository.push(write_model(tmp_path, "a", identity_model("FP32")), "m")
    real_versions = repository.versions
    listings: list[list[int]] = []

    def first_listing_is_stale(name: str) -> list[int]:
        # The first listing misses the version just published, as a racing push would see it.
        listings.append([] if not listings else real_versions(name))
        return listings[-1]

    monkeypatch.setattr(repository, "versions", first_listing_is_stale)
    second = repository.push(write_model(tmp_path, "b", identity_model("FP64")), "m")
    assert (first.version, second.version) == (1, 2)
    assert listings == [[], [1]], "the push retried after losing version 1"
    assert repository.read_manifest("m", 1).sha256 == first.sha256


def test_retrying_an_identical_push_after_a_half_failed_one_succeeds(
    repository: ModelRepository, tmp_path: Path
) -> None:
    data = identity_model("FP32")
    orphan = tmp_path / "store" / model_key("m", 1)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(data)  # the model was written, the manifest never was
    assert repository.push(write_model(tmp_path, "m", data), "m", version=1).version == 1


def test_readiness_heals_once_a_failed_preload_becomes_loadable(
    repository: ModelRepository, tmp_path: Path
) -> None:
    service = InferenceService(
        repository, Settings(store_uri=repository.uri, preload=(("late", None),), failure_retry_seconds=0)
    )
    service.preload()
    assert service.handle("GET", "/v2/health/ready", {}, b"").status == 503
    repository.push(write_model(tmp_path, "late", identity_model("FP32")), "late")
    assert service.handle("GET", "/v2/health/ready", {}, b"").status == 200


def test_unknown_models_do_not_grow_memory(repository: ModelRepository, tmp_path: Path) -> None:
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    service = InferenceService(repository, Settings(store_uri=repository.uri))
    for version in range(2, 500):
        assert service.handle("POST", f"/v2/models/m/versions/{version}/infer", {}, INFER_FP32).status == 404
    assert len(service.lifecycle._locks) == 0


def test_repository_load_and_unload(repository: ModelRepository, tmp_path: Path) -> None:
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    service = InferenceService(repository, Settings(store_uri=repository.uri))
    assert service.handle("POST", "/v2/repository/models/m/load", {}, b"").status == 200
    assert service.lifecycle.cache.get("m", 1) is not None
    assert service.handle("POST", "/v2/repository/models/m/unload", {}, b"").status == 200
    assert service.lifecycle.cache.get("m", 1) is None
    assert service.handle("POST", "/v2/repository/models/nope/load", {}, b"").status == 404
    assert service.handle("GET", "/v2/repository/models/m/load", {}, b"").status == 405


def test_head_is_answered_like_get(repository: ModelRepository) -> None:
    service = InferenceService(repository, Settings(store_uri=repository.uri))
    assert service.handle("HEAD", "/v2/health/live", {}, b"").status == 200
    refused = service.handle("PUT", "/v2/health/live", {}, b"")
    assert refused.status == 405 and refused.headers()["Allow"] == "GET, HEAD"


def test_a_response_over_lambdas_limit_is_a_clear_error(
    repository: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    service = InferenceService(repository, Settings(store_uri=repository.uri))
    monkeypatch.setattr(apigw, "MAX_RESPONSE_PAYLOAD_BYTES", 4096 + 300)
    event = {"httpMethod": "POST", "path": "/v2/models/m/infer", "headers": {}, "body": INFER_FP32.decode()}
    assert apigw.handle_event(service, event)["statusCode"] == 200
    big = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [100, 3], "datatype": "FP32", "data": [0.1] * 300}]}
    )
    result = apigw.handle_event(service, {**event, "body": big.decode()})
    assert result["statusCode"] == 400
    assert "over the" in orjson.loads(result["body"])["error"]


@pytest.mark.parametrize(
    "event",
    [
        None,
        [],
        {"httpMethod": "POST", "path": None},
        {"httpMethod": 1, "path": "/v2"},
        {"httpMethod": "POST", "path": "/v2/models/m/infer", "body": {"inputs": []}},
        {"httpMethod": "GET", "path": "/v2", "headers": ["not", "a", "dict"]},
    ],
)
def test_malformed_events_are_400(repository: ModelRepository, event: object) -> None:
    service = InferenceService(repository, Settings(store_uri=repository.uri))
    result = apigw.handle_event(service, event)  # type: ignore[arg-type]
    assert result["statusCode"] == 400
    assert "API Gateway" in orjson.loads(result["body"])["error"]


@pytest.mark.timeout(20)
def test_a_fifo_planted_in_the_store_fails_closed_without_hanging(
    repository: ModelRepository, tmp_path: Path
) -> None:
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    model_file = tmp_path / "store" / model_key("m", 1)
    model_file.unlink()
    os.mkfifo(model_file)
    service = InferenceService(repository, Settings(store_uri=repository.uri))
    assert service.handle("POST", "/v2/models/m/infer", {}, INFER_FP32).status == 503


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_invalid_timing_settings_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="MODELSHIP_FAILURE_RETRY_SECONDS"):
        Settings.from_env({"MODELSHIP_FAILURE_RETRY_SECONDS": value})


def test_a_background_preload_leaves_the_server_answering_while_the_store_hangs(
    repository: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A door listens at once; readiness says what is still loading, and never waits on the store."""
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    store_answers = threading.Event()
    real_list_keys = repository.blobs.list_keys

    def hanging_list_keys(prefix: str) -> Iterator[str]:
        store_answers.wait(timeout=30)
        return real_list_keys(prefix)

    monkeypatch.setattr(repository.blobs, "list_keys", hanging_list_keys)
    service = InferenceService(repository, Settings(store_uri=repository.uri, preload=(("m", None),)))
    preloader = service.start_preload()
    started = time.monotonic()
    assert service.handle("GET", "/v2/health/live", {}, b"").status == 200
    ready = service.handle("GET", "/v2/health/ready", {}, b"")
    assert ready.status == 503 and "still loading: ['m']" in orjson.loads(ready.body)["error"]
    assert time.monotonic() - started < 5
    store_answers.set()
    preloader.join(timeout=30)
    assert service.handle("GET", "/v2/health/ready", {}, b"").status == 200


def test_a_stale_listing_is_refreshed_once_while_others_answer_from_memory(
    repository: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that stops answering costs one slow call per retry period, not one per request."""
    repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    clock = FakeClock()
    service = InferenceService(
        repository,
        Settings(store_uri=repository.uri, version_poll_seconds=60, failure_retry_seconds=5),
        clock=clock,
    )
    assert service.handle("POST", "/v2/models/m/infer", {}, INFER_FP32).status == 200
    listings: list[str] = []

    def unreachable(prefix: str) -> Iterator[str]:
        listings.append(prefix)
        raise OSError("connection timed out")

    monkeypatch.setattr(repository.blobs, "list_keys", unreachable)
    clock.advance(61)
    for _ in range(6):
        assert service.handle("POST", "/v2/models/m/infer", {}, INFER_FP32).status == 200
    assert len(listings) == 1, "one failed refresh, remembered"
    clock.advance(5)
    assert service.handle("POST", "/v2/models/m/infer", {}, INFER_FP32).status == 200
    assert len(listings) == 2, "retried after failure_retry_seconds"
