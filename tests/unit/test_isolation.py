"""The isolated first load: a model that would not fit or not finish is refused without the server
ever holding it, and what a good one costs is measured alone."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from modelship.core.errors import ModelUnavailable
from modelship.core.isolation import ProbeReport, probe_model
from modelship.core.repository import ModelRepository
from modelship.core.service import InferenceService
from modelship.core.sessions import resident_bytes
from modelship.core.settings import Settings

from tests.support import hostile_models
from tests.support.models import identity_model, write_model

MIB = 1024 * 1024


def probe(data: bytes, *, limit: int = 256 * MIB, timeout: float = 60, run_timeout: float = 5) -> ProbeReport:
    return probe_model(
        data,
        where="m version 1",
        memory_limit_bytes=limit,
        timeout_seconds=timeout,
        run_timeout=run_timeout,
        threads=1,
    )


def test_a_small_model_is_measured_small_and_a_folded_one_large() -> None:
    small = probe(identity_model("FP32"))
    folded = probe(hostile_models.memory_bomb(mebibytes=96))
    assert small.session_bytes < 32 * MIB
    assert folded.session_bytes >= 96 * MIB


@pytest.mark.parametrize("mebibytes", [1024, 4096], ids=["folds-1GiB", "folds-4GiB"])
def test_a_model_that_needs_more_than_the_limit_is_refused(mebibytes: int) -> None:
    with pytest.raises(ModelUnavailable, match="needs more than"):
        probe(hostile_models.memory_bomb(mebibytes=mebibytes), limit=64 * MIB)


def test_a_warm_up_that_never_ends_is_refused() -> None:
    with pytest.raises(ModelUnavailable, match="deadline"):
        probe(hostile_models.counting_loop(2**62), run_timeout=0.5)


def test_a_load_past_its_timeout_is_refused() -> None:
    with pytest.raises(ModelUnavailable, match="did not finish loading within"):
        probe(identity_model("FP32"), timeout=0.001)


def test_external_data_is_refused_in_the_child_too() -> None:
    with pytest.raises(ModelUnavailable, match="external data"):
        probe(hostile_models.external_initializer())


def test_the_server_never_holds_a_refused_bomb(tmp_path: Path) -> None:
    repository = ModelRepository.open(str(tmp_path / "store"))
    repository.push(write_model(tmp_path, "bomb", hostile_models.memory_bomb(mebibytes=1024)), "bomb")
    service = InferenceService(repository, Settings(store_uri=repository.uri, session_memory_bytes=128 * MIB))
    before = resident_bytes()
    response = service.handle("GET", "/v2/models/bomb", {}, b"")
    after = resident_bytes()
    assert response.status == 503
    assert "MiB" in orjson.loads(response.body)["error"]
    assert before is not None and after is not None
    assert after - before < 64 * MIB, "the gigabyte was only ever in the child"
