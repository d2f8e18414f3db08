"""The image-classification example end to end: ``modelship example digits`` builds it, ``push
--preprocessing`` records its preprocessing, all three doors serve it (``modelship serve``, the Lambda
handler fed API Gateway events, the edge door), ``infer --image`` asks them with a PNG, and
``optimize --int8`` publishes its INT8 versions, or refuses one that disagrees with its source."""

from __future__ import annotations

import base64
import importlib
import shutil
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import pytest
from modelship.core.manifest import Preprocessing
from modelship.core.repository import ModelRepository
from modelship.core.service import InferenceService
from modelship.core.settings import Settings
from modelship.doors.local_http import LocalLambdaContext
from modelship.tools.image_input import image_tensor

from tests.support.edge_door import component_folder, running_door
from tests.support.events import load_event
from tests.support.processes import run_modelship, running_server
from tests.support.quantization_models import tied_classifier


@dataclass(frozen=True)
class DigitsStore:
    example: Path
    store: Path
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsStore:
    """The example as a user builds and pushes it, with the command line."""
    root = tmp_path_factory.mktemp("digits")
    example, store = root / "digits", root / "store"
    run_modelship("example", "digits", "--out", str(example), check=True, timeout=120)
    pushed = run_modelship(
        "push",
        str(example / "digits.onnx"),
        "--name",
        "digits",
        "--labels",
        str(example / "digits.labels.json"),
        "--preprocessing",
        str(example / "digits.preprocessing.json"),
        "--store",
        str(store),
        check=True,
        timeout=120,
    )
    return DigitsStore(example, store, orjson.loads(pushed.stdout))


def ranked(stdout: str) -> list[tuple[str, float]]:
    """``infer --image``'s table: (class, score), best first."""
    lines = stdout.strip().splitlines()
    assert lines[1].split() == ["CLASS", "SCORE"], stdout
    return [(line.split()[0], float(line.split()[1])) for line in lines[2:]]


def test_the_example_is_built_as_documented(digits: DigitsStore) -> None:
    names = sorted(path.name for path in digits.example.iterdir())
    assert names == [
        "digit-3.png",
        "digit-7.png",
        "digits.calibration.npz",
        "digits.labels.json",
        "digits.onnx",
        "digits.preprocessing.json",
    ]
    assert orjson.loads((digits.example / "digits.labels.json").read_bytes()) == [str(d) for d in range(10)]
    block = orjson.loads((digits.example / "digits.preprocessing.json").read_bytes())
    assert digits.manifest["preprocessing"] == block
    assert (block["input"], block["size"], block["channels"], block["layout"]) == ("image", [8, 8], 1, "NCHW")
    assert digits.manifest["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert "optimization" not in digits.manifest


def test_the_same_bytes_and_preprocessing_again_push_nothing(digits: DigitsStore, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(digits.store, store)
    arguments = ["push", str(digits.example / "digits.onnx"), "--name", "digits", "--store", str(store)]
    arguments += ["--labels", str(digits.example / "digits.labels.json")]
    again = run_modelship(*arguments, "--preprocessing", str(digits.example / "digits.preprocessing.json"))
    assert again.returncode == 0, again.stderr
    assert "digits version 1 already holds this model" in again.stderr
    # Without the preprocessing block it is another model for a client: a new version.
    without = run_modelship(*arguments)
    assert without.returncode == 0, without.stderr
    assert orjson.loads(without.stdout)["version"] == 2
    assert "preprocessing" not in orjson.loads(without.stdout)


@pytest.fixture
def lambda_app(digits: DigitsStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("MODELSHIP_STORE", str(digits.store))
    monkeypatch.setenv("MODELSHIP_PRELOAD", "digits")
    monkeypatch.setenv("MODELSHIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", f"modelship-test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ModelshipTest")
    sys.modules.pop("inference.app", None)
    module = importlib.import_module("inference.app")
    yield module
    sys.modules.pop("inference.app", None)


def lambda_event(method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
    event = load_event("infer_json.json")
    event["httpMethod"] = event["requestContext"]["httpMethod"] = method
    event["path"] = path
    event["pathParameters"] = {"proxy": path.removeprefix("/v2/")}
    event["requestContext"]["path"] = f"/prod{path}"
    event["body"] = base64.b64encode(body).decode() if body is not None else None
    event["isBase64Encoded"] = body is not None
    return event


def lambda_answer(app: ModuleType, image: Path) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    """The Lambda handler in this process: the metadata, then the image as its preprocessing says."""
    metadata_result = app.handler(lambda_event("GET", "/v2/models/digits"), LocalLambdaContext())
    assert metadata_result["statusCode"] == 200, metadata_result
    metadata = orjson.loads(metadata_result["body"])
    preprocessing = Preprocessing.from_json(metadata["parameters"]["preprocessing"])
    tensor = image_tensor(image, preprocessing).tensor
    request = {"inputs": [{"name": "image", "shape": list(tensor.shape), "datatype": "FP32"}]}
    request["inputs"][0]["data"] = tensor.ravel().tolist()
    request["outputs"] = [{"name": "probabilities"}]
    result = app.handler(
        lambda_event("POST", "/v2/models/digits/infer", orjson.dumps(request)), LocalLambdaContext()
    )
    assert result["statusCode"] == 200, result
    (output,) = orjson.loads(result["body"])["outputs"]
    scores = np.asarray(output["data"], dtype=np.float64)
    labels = metadata["parameters"]["labels"]
    order = np.argsort(-scores, kind="stable")[:5]
    return metadata, [(labels[index], float(scores[index])) for index in order]


def test_the_digits_example_gives_the_same_answer_through_all_three_doors(
    digits: DigitsStore, lambda_app: ModuleType, tmp_path: Path
) -> None:
    images = [digits.example / "digit-3.png", digits.example / "digit-7.png"]
    answers: dict[str, list[list[tuple[str, float]]]] = {}
    metadata: dict[str, Any] = {}

    def ask(door: str, url: str) -> None:
        with urllib.request.urlopen(f"{url}/v2/models/digits", timeout=30) as response:
            metadata[door] = orjson.loads(response.read())
        answers[door] = []
        for image in images:
            completed = run_modelship("infer", "--url", url, "--model", "digits", "--image", str(image))
            assert completed.returncode == 0, completed.stderr
            assert completed.stdout.startswith(f"digits version 1: {image.name} (32x32, resized to 8x8)")
            answers[door].append(ranked(completed.stdout))

    with running_server(["--store", str(digits.store), "--preload", "digits"], tmp_path) as server:
        ask("serve", server.url)
    folder = component_folder(tmp_path / "greengrass", "digits", 1)
    folder.mkdir(parents=True)
    for filename in ("model.onnx", "manifest.json"):
        shutil.copy(digits.store / "models" / "digits" / "1" / filename, folder / filename)
    with running_door(tmp_path, [f"digits={folder}"], wait_for="/v2/models/digits/ready") as edge:
        ask("edge", edge.url)
    lambda_answers = [lambda_answer(lambda_app, image) for image in images]
    metadata["lambda"] = lambda_answers[0][0]
    answers["lambda"] = [answer for _, answer in lambda_answers]

    for door in ("serve", "edge", "lambda"):
        assert metadata[door]["parameters"]["preprocessing"] == digits.manifest["preprocessing"], door
        assert metadata[door]["parameters"]["labels"] == [str(d) for d in range(10)], door
        assert [answer[0][0] for answer in answers[door]] == ["3", "7"], door
        assert all(answer[0][1] > 0.9 for answer in answers[door]), door
        for got, want in zip(answers[door], answers["serve"], strict=True):
            assert [label for label, _ in got] == [label for label, _ in want], door
            # The CLI prints six significant digits.
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-9)


def test_infer_image_refuses_bad_images_with_one_line(digits: DigitsStore, tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    block = str(digits.example / "digits.preprocessing.json")
    with running_server(["--store", str(digits.store), "--preload", "digits"], tmp_path) as server:
        completed = run_modelship(
            "infer",
            "--url",
            server.url,
            "--model",
            "digits",
            "--image",
            str(not_an_image),
            "--preprocessing",
            block,
        )
        fine = run_modelship(
            "infer", "--url", server.url, "--model", "digits", "--image", str(digits.example / "digit-7.png"),
            "--preprocessing", block, "--binary", "--top", "2",
        )  # fmt: skip
    assert completed.returncode == 1
    assert completed.stderr.strip() == f"error: {not_an_image} is not a PNG or JPEG image"
    assert completed.stdout == ""
    assert fine.returncode == 0, fine.stderr
    assert [label for label, _ in ranked(fine.stdout)] == ["7", ranked(fine.stdout)[1][0]]
    assert len(ranked(fine.stdout)) == 2


def test_optimize_publishes_int8_versions_that_agree_with_their_source(
    digits: DigitsStore, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(digits.store, store)
    dynamic = run_modelship("optimize", "digits", "--int8", "--store", str(store), "--json")
    assert dynamic.returncode == 0, dynamic.stderr
    static = run_modelship(
        "optimize", "digits:1", "--int8", "--store", str(store), "--json",
        "--calibration", str(digits.example / "digits.calibration.npz"),
    )  # fmt: skip
    assert static.returncode == 0, static.stderr
    for completed, version, method in ((dynamic, 2, "int8-dynamic"), (static, 3, "int8-static")):
        document = orjson.loads(completed.stdout)
        report, published = document["report"], document["published"]
        assert published["version"] == version
        assert report["method"] == method
        assert report["size_bytes"]["int8"] < report["size_bytes"]["source"] == digits.manifest["size"]
        assert report["repeats"] >= 20
        assert report["p50_ms"]["source"] > 0 and report["p50_ms"]["int8"] > 0
        assert report["agreement"]["top1"] >= 0.99
        lineage = published["optimization"]
        assert lineage["source"] == {"name": "digits", "version": 1, "sha256": digits.manifest["sha256"]}
        assert lineage["method"] == method and lineage["tool"].startswith("onnxruntime ")
        assert lineage["agreement"]["top1"] == report["agreement"]["top1"]
        assert published["labels"] == digits.manifest["labels"]
        assert published["preprocessing"] == digits.manifest["preprocessing"]
        assert published == orjson.loads(
            (store / "models" / "digits" / str(version) / "manifest.json").read_bytes()
        )
        assert f"pushed digits version {version} ({method}, from version 1)" in completed.stderr
    assert orjson.loads(static.stdout)["report"]["agreement"]["samples"] == 200
    assert (
        orjson.loads(dynamic.stdout)["report"]["agreement"]["compared_on"] == "64 generated samples (seed 0)"
    )

    # The INT8 versions serve, and read the sample digits as their source does.
    service = InferenceService.from_settings(
        Settings(store_uri=str(store), cache_dir=tmp_path / "cache", isolate_loads=False)
    )
    preprocessing = Preprocessing.from_json(digits.manifest["preprocessing"])
    for version in (2, 3):
        for digit in ("3", "7"):
            tensor = image_tensor(digits.example / f"digit-{digit}.png", preprocessing).tensor
            request = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                   "data": tensor.ravel().tolist()}]}  # fmt: skip
            response = service.handle(
                "POST", f"/v2/models/digits/versions/{version}/infer", {}, orjson.dumps(request)
            )
            assert response.status == 200, response.body
            label = next(out for out in orjson.loads(response.body)["outputs"] if out["name"] == "label")
            assert label["data"] == [int(digit)]


def _snapshot(store: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(store)): path.read_bytes() for path in sorted(store.rglob("*")) if path.is_file()
    }


def test_optimize_refuses_an_int8_model_that_disagrees_and_leaves_the_store_alone(tmp_path: Path) -> None:
    store = tmp_path / "store"
    model = tmp_path / "tied.onnx"
    model.write_bytes(tied_classifier())
    ModelRepository.open(str(store)).push(model, "tied")
    before = _snapshot(store)
    refused = run_modelship("optimize", "tied", "--int8", "--store", str(store))
    assert refused.returncode == 1, refused.stderr
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("error: top-1 agreement 0.")
    assert "is below the minimum 0.9900 by 0." in message and message.endswith("nothing was published")
    assert "top-1 agreement" in refused.stdout and "Traceback" not in refused.stderr
    assert _snapshot(store) == before
    # The threshold is the user's: at 0 the same model is published.
    accepted = run_modelship("optimize", "tied:1", "--int8", "--store", str(store), "--min-agreement", "0")
    assert accepted.returncode == 0, accepted.stderr
    assert sorted(_snapshot(store)) == sorted(
        [*before, "models/tied/2/model.onnx", "models/tied/2/manifest.json"]
    )
