from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from modelship.core.default_model import build_iris_model
from modelship.core.repository import ModelRepository
from modelship.core.service import InferenceService
from modelship.core.settings import Settings

from tests.support.hostile_models import unranked_identity
from tests.support.models import SAMPLE_BY_DATATYPE, add_sub_model, identity_model, write_model


@pytest.fixture(scope="session")
def iris_model() -> tuple[bytes, list[str]]:
    data, labels, accuracy = build_iris_model()
    assert accuracy > 0.95
    return data, labels


@pytest.fixture(scope="session")
def populated_store(tmp_path_factory: pytest.TempPathFactory, iris_model: tuple[bytes, list[str]]) -> Path:
    """A local store with iris, add_sub and one identity model per datatype. Read-only for tests."""
    root = tmp_path_factory.mktemp("store")
    scratch = tmp_path_factory.mktemp("models")
    repository = ModelRepository.open(str(root))
    data, labels = iris_model
    repository.push(write_model(scratch, "iris", data), "iris", labels=labels)
    repository.push(write_model(scratch, "add_sub", add_sub_model()), "add_sub")
    # "broken" exists but its bytes no longer match the manifest: every load must fail closed (503).
    broken = repository.push(write_model(scratch, "broken", identity_model("FP32")), "broken")
    (root / "models" / "broken" / str(broken.version) / "model.onnx").write_bytes(b"\0" * broken.size)
    repository.push(write_model(scratch, "identity_any_rank", unranked_identity()), "identity_any_rank")
    for datatype in SAMPLE_BY_DATATYPE:
        name = f"identity_{datatype.lower()}"
        repository.push(write_model(scratch, name, identity_model(datatype)), name)
    return root


@pytest.fixture
def service(populated_store: Path, tmp_path: Path) -> Iterator[InferenceService]:
    # The protocol and routing tests load many models per test; the isolated first load (a child
    # process per model) has tests of its own (test_hostile_models, test_isolation) and the real servers.
    settings = Settings(
        store_uri=str(populated_store),
        cache_dir=tmp_path / "cache",
        preload=(("iris", None),),
        isolate_loads=False,
    )
    service = InferenceService.from_settings(settings)
    service.preload()
    yield service
