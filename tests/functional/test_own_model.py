"""README, "Serve your own model": a model built with the pinned onnx at its defaults is refused with its
versions and onnxruntime's, then pushed with --convert, served and called, as a new user does it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import orjson
from onnx.reference import ReferenceEvaluator

from tests.support.processes import free_port, run_modelship, running_server

# The README's snippet, word for word: run in the user's working directory.
BUILD_MY_MODEL = """\
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

weights = numpy_helper.from_array(np.array([[1.0, -1.0], [0.5, 2.0], [-1.5, 0.0]], np.float32), "weights")
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "weights"], ["scores"]), helper.make_node("Relu", ["scores"], ["y"])],
    "my-model",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    [weights],
)
onnx.save(helper.make_model(graph), "my-model.onnx")  # onnx's defaults: IR version 14, opset 28 today
"""
SAMPLE = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]], dtype=np.float32)


def _store_files(store: Path) -> list[str]:
    return sorted(str(path.relative_to(store)) for path in store.rglob("*")) if store.exists() else []


def test_a_model_built_with_the_pinned_onnx_is_refused_then_converted_served_and_called(
    tmp_path: Path,
) -> None:
    subprocess.run([sys.executable, "-c", BUILD_MY_MODEL], cwd=tmp_path, check=True, timeout=120)
    model_path = tmp_path / "my-model.onnx"
    original = onnx.load(model_path)
    # The model is what onnx writes by default, whatever that is now: read from onnx, not written here.
    assert original.ir_version == onnx.IR_VERSION
    assert [(entry.domain, entry.version) for entry in original.opset_import] == [
        ("", onnx.defs.onnx_opset_version())
    ]
    store = tmp_path / "store"

    refused = run_modelship("push", str(model_path), "--name", "my-model", "--store", str(store), timeout=120)
    assert refused.returncode == 2, refused.stderr
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("error: the model has ")
    assert f"IR version {onnx.IR_VERSION}, opset ai.onnx {onnx.defs.onnx_opset_version()}" in message
    assert "the bundled onnxruntime 1.31.1 loads (at most IR version 13, opset ai.onnx 26)" in message
    assert "--convert" in message
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    assert [name for name in _store_files(store) if name.startswith("models")] == []

    pushed = run_modelship(
        "push", str(model_path), "--name", "my-model", "--store", str(store), "--convert", timeout=120
    )
    assert pushed.returncode == 0, pushed.stderr
    manifest = orjson.loads(pushed.stdout)
    assert manifest["version"] == 1
    assert manifest["opset"] == {"ai.onnx": 26}
    conversion = manifest["conversion"]
    assert conversion["original_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert conversion["original_ir_version"] == onnx.IR_VERSION
    assert conversion["original_opset"] == {"ai.onnx": onnx.defs.onnx_opset_version()}
    assert (conversion["ir_version"], conversion["opset"]) == (13, {"ai.onnx": 26})
    assert conversion["converter"] == f"onnx {onnx.__version__}"
    assert "outputs match onnx.reference" in conversion["checked"]
    assert manifest == orjson.loads((store / "models/my-model/1/manifest.json").read_bytes())
    assert "converted with onnx" in pushed.stderr

    # The same model again: version 1 holds it already.
    again = run_modelship(
        "push", str(model_path), "--name", "my-model", "--store", str(store), "--convert", timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "my-model version 1 already holds this model" in again.stderr
    assert orjson.loads(again.stdout)["version"] == 1
    assert orjson.loads(run_modelship("list", "--store", str(store), "--json", check=True).stdout) == {
        "my-model": [1]
    }

    outputs = cast(list[np.ndarray], ReferenceEvaluator(original).run(None, {"x": SAMPLE}))
    expected = outputs[0].astype(np.float32)
    np.testing.assert_allclose(expected, np.maximum(SAMPLE @ np.array([[1, -1], [0.5, 2], [-1.5, 0]]), 0))
    np.save(tmp_path / "x.npy", SAMPLE)
    # One input: NAME= may be left out, and the value may come from a file.
    ways = [[orjson.dumps(SAMPLE.tolist()).decode()], [f"@{tmp_path / 'x.npy'}", "--binary"]]
    with running_server(["--store", str(store), "--preload", "my-model"], tmp_path) as server:
        answers = [
            run_modelship("infer", "--url", server.url, "--model", "my-model", "--input", *way)
            for way in ways
        ]
    for completed in answers:
        assert completed.returncode == 0, completed.stderr
        (output,) = orjson.loads(completed.stdout)["outputs"]
        assert (output["name"], output["shape"]) == ("y", [2, 2])
        np.testing.assert_allclose(np.asarray(output["data"], np.float32).reshape(2, 2), expected, rtol=1e-6)


def test_infer_says_plainly_that_nothing_answers(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    completed = run_modelship("infer", "--url", url, "--model", "m", "--input", "[1]", timeout=60)
    assert completed.returncode == 1
    assert completed.stderr.strip() == f"error: cannot reach {url}: Connection refused"
