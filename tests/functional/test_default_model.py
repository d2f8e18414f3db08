"""The Quick start: ``modelship serve`` with no store trains and serves the bundled iris model."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson

from tests.support.processes import running_server

# The request the README's curl example sends.
README_REQUEST = {
    "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}],
    "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}, {"name": "label"}],
}


def test_first_run_creates_the_default_store_and_serves_iris(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "MODELSHIP_STORE": "", "MODELSHIP_PRELOAD": ""}
    with running_server([], tmp_path, env=env) as server:
        completed = subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "POST",
                f"{server.url}/v2/models/iris/infer",
                "-d",
                orjson.dumps(README_REQUEST),
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert "first run: training the bundled iris model" in server.log()
    document = orjson.loads(completed.stdout)
    outputs = {output["name"]: output for output in document["outputs"]}
    assert outputs["probabilities"]["data"][0].endswith(":0:setosa")
    assert outputs["label"]["data"] == [0]
    manifest = tmp_path / "data" / "modelship" / "store" / "models" / "iris" / "1" / "manifest.json"
    assert orjson.loads(manifest.read_bytes())["labels"] == ["setosa", "versicolor", "virginica"]

    # Second run: the store exists, nothing is retrained.
    with running_server([], tmp_path, env=env) as server:
        assert "first run" not in server.log()
    assert sorted(os.listdir(manifest.parents[1])) == ["1"]
