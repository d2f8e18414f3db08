"""A new user's first hour (issue 10): their own model, and the details of the command line."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

# urllib3 opens a socket at import (its IPv6 check): import it now, while sockets are still on.
import botocore.session  # noqa: F401
import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from modelship.core.errors import ModelUnavailable
from modelship.core.manifest import Manifest
from modelship.core.model_checks import declared_versions
from modelship.core.onnx_versions import probe_model, runtime_limits
from modelship.core.repository import ModelRepository, manifest_key
from modelship.tools.cli import main
from modelship.tools.client import parse_input_value
from onnx import TensorProto, helper

from tests.support.models import identity_model, write_model


def _relu_model(opsets: dict[str, int] | None = None, ir_version: int | None = None) -> bytes:
    """A one-node model at onnx's defaults unless told otherwise."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    imports = [helper.make_opsetid(name, version) for name, version in (opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=imports) if imports else helper.make_model(graph)
    if ir_version is not None:
        model.ir_version = ir_version
    data: bytes = model.SerializeToString()
    return data


def _float6_model() -> bytes:
    """Opset 26, IR version 14: only its FLOAT6E2M3 output (a type IR version 14 added) keeps it there."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT6E2M3)],
        "float6",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT6E2M3, [1])],
    )
    data: bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)]).SerializeToString()
    return data


def _ort_refusal(data: bytes) -> str:
    with pytest.raises(Exception) as raised:  # onnxruntime's own exception types
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return str(raised.value)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code: object = main(argv)
    except SystemExit as stopped:
        code = stopped.code if isinstance(stopped.code, int) else 1
        if isinstance(stopped.code, str):
            print(stopped.code, file=sys.stderr)
    out, err = capsys.readouterr()
    assert isinstance(code, int)
    return code, out, err


def _model_files(store: Path) -> list[str]:
    root = store / "models"
    return sorted(str(path.relative_to(store)) for path in root.rglob("*")) if root.exists() else []


# onnxruntime's limits.


def test_the_probed_limits_are_what_onnxruntimes_own_errors_name() -> None:
    limits = runtime_limits()
    assert limits is not None
    assert limits.onnxruntime_version == ort.__version__
    ir_error = _ort_refusal(_relu_model({"": 13}, ir_version=limits.ir_version + 1))
    assert f"max supported IR version: {limits.ir_version}" in ir_error
    opset_error = _ort_refusal(_relu_model({"": limits.opsets["ai.onnx"] + 1}, ir_version=limits.ir_version))
    assert f"support for domain ai.onnx is till opset {limits.opsets['ai.onnx']}" in opset_error
    ml = {"": 13, "ai.onnx.ml": limits.opsets["ai.onnx.ml"] + 1}
    ml_error = _ort_refusal(_relu_model(ml, ir_version=limits.ir_version))
    assert f"support for domain ai.onnx.ml is till opset {limits.opsets['ai.onnx.ml']}" in ml_error
    # The probe at the limits themselves loads.
    ort.InferenceSession(probe_model(limits.ir_version, limits.opsets), providers=["CPUExecutionProvider"])


def test_declared_versions_are_read_as_onnx_reads_them() -> None:
    data = _relu_model({"": 21, "ai.onnx.ml": 4, "com.example": 7}, ir_version=10)
    model = onnx.load_model_from_string(data)
    assert declared_versions(data) == (
        model.ir_version,
        {entry.domain or "ai.onnx": entry.version for entry in model.opset_import},
    )
    assert declared_versions(data) == (10, {"ai.onnx": 21, "ai.onnx.ml": 4, "com.example": 7})


# push: refused, converted, refused conversion.


def test_a_model_at_onnxs_defaults_is_refused_naming_its_versions_and_the_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_model(tmp_path, "mine", _relu_model())
    store = tmp_path / "store"
    code, out, err = _run(["push", str(path), "--name", "mine", "--store", str(store)], capsys)
    assert code == 2
    assert out == ""
    line = err.strip().splitlines()[-1]
    assert line == (
        f"error: the model has IR version {onnx.IR_VERSION}, opset ai.onnx {onnx.defs.onnx_opset_version()}, "
        "newer than the bundled onnxruntime 1.31.1 loads (at most IR version 13, opset ai.onnx 26): push it "
        "with --convert to convert it with the onnx package, or re-export it within those limits"
    )
    assert _model_files(store) == []


def test_convert_publishes_the_converted_model_and_records_the_conversion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _relu_model()
    path = write_model(tmp_path, "mine", data)
    store = tmp_path / "store"
    code, out, err = _run(["push", str(path), "--name", "mine", "--store", str(store), "--convert"], capsys)
    assert code == 0, err
    assert "converted with onnx" in err
    published = (store / "models/mine/1/model.onnx").read_bytes()
    assert declared_versions(published) == (13, {"ai.onnx": 26})
    manifest = ModelRepository.open(str(store)).read_manifest("mine", 1)
    assert manifest.sha256 == hashlib.sha256(published).hexdigest()
    assert manifest.conversion is not None
    assert manifest.conversion.to_json() == {
        "original_sha256": hashlib.sha256(data).hexdigest(),
        "original_ir_version": onnx.IR_VERSION,
        "original_opset": {"ai.onnx": onnx.defs.onnx_opset_version()},
        "ir_version": 13,
        "opset": {"ai.onnx": 26},
        "converter": f"onnx {onnx.__version__}",
        "checked": "onnx.checker; outputs match onnx.reference running the original on a sample input",
    }
    assert orjson.loads(out) == manifest.to_json()
    session = ort.InferenceSession(published, providers=["CPUExecutionProvider"])
    sample = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": sample})[0], np.maximum(sample, 0))


def test_convert_leaves_a_model_onnxruntime_loads_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = identity_model("FP32")
    path = write_model(tmp_path, "fine", data)
    code, out, err = _run(
        ["push", str(path), "--name", "fine", "--store", str(tmp_path / "s"), "--convert"], capsys
    )
    assert code == 0, err
    assert "no conversion needed" in err
    assert "conversion" not in orjson.loads(out)
    assert (tmp_path / "s/models/fine/1/model.onnx").read_bytes() == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            _relu_model({"": 26, "ai.onnx.ml": 6}, ir_version=10),
            "its ai.onnx.ml opset is 6 and onnxruntime loads up to 5, but onnx's version converter converts "
            "only the ai.onnx domain: re-export it with ai.onnx.ml opset 5 or lower",
        ),
        (
            _float6_model(),
            "it uses the FLOAT6E2M3 type, which IR version 14 added; onnxruntime loads up to IR version 13",
        ),
    ],
    ids=["ml-opset", "float6"],
)
def test_a_conversion_that_cannot_be_done_says_why_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, reason: str
) -> None:
    path = write_model(tmp_path, "mine", data)
    store = tmp_path / "store"
    code, _, err = _run(["push", str(path), "--name", "mine", "--store", str(store), "--convert"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == f"error: cannot convert the model: {reason}; nothing was pushed"
    assert _model_files(store) == []


def test_convert_without_onnx_names_the_extra_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_model(tmp_path, "mine", _relu_model())
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    store = tmp_path / "store"
    code, _, err = _run(["push", str(path), "--name", "mine", "--store", str(store), "--convert"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: --convert needs the onnx package: install the local extra: pip install -e '.[local]' "
        "(it pins onnx)"
    )
    assert _model_files(store) == []


def test_a_malformed_conversion_record_fails_closed(tmp_path: Path) -> None:
    repository = ModelRepository.open(str(tmp_path / "store"))
    manifest = repository.push(write_model(tmp_path, "m", identity_model("FP32")), "m")
    document: dict[str, Any] = manifest.to_json()
    document["conversion"] = {"original_sha256": "not a digest"}
    with pytest.raises(ModelUnavailable, match="manifest of m version 1 is malformed"):
        Manifest.loads(orjson.dumps(document), expected_name="m", expected_version=1)
    assert "conversion" not in orjson.loads(repository.blobs.read(manifest_key("m", 1), 1 << 20))


# push: the same bytes again.


def test_pushing_the_latest_versions_bytes_again_creates_no_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_model(tmp_path, "m", identity_model("FP32"))
    store = str(tmp_path / "store")
    assert _run(["push", str(path), "--name", "m", "--store", store], capsys)[0] == 0
    code, out, err = _run(["push", str(path), "--name", "m", "--store", store], capsys)
    assert code == 0
    assert err.strip() == (
        "m version 1 already holds this model (the same bytes, the same labels): nothing pushed; --force "
        "pushes it again as a new version"
    )
    assert orjson.loads(out)["version"] == 1
    assert ModelRepository.open(store).versions("m") == [1]
    # Other labels are another version; so is --force.
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    assert _run(["push", str(path), "--name", "m", "--store", store, "--labels", str(labels)], capsys)[0] == 0
    assert _run(["push", str(path), "--name", "m", "--store", store, "--force"], capsys)[0] == 0
    assert ModelRepository.open(store).versions("m") == [1, 2, 3]
    # An explicit --version is pushed as asked, whatever the latest holds.
    assert _run(["push", str(path), "--name", "m", "--store", store, "--version", "7"], capsys)[0] == 0
    assert ModelRepository.open(store).versions("m") == [1, 2, 3, 7]


# list.


def test_list_aligns_names_and_versions_under_a_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = ModelRepository.open(str(tmp_path / "store"))
    repository.push(write_model(tmp_path, "a", identity_model("FP32")), "a-rather-long-model-name")
    for datatype in ("FP32", "FP64"):
        repository.push(write_model(tmp_path, "b", identity_model(datatype)), "b")
    code, out, _ = _run(["list", "--store", str(tmp_path / "store")], capsys)
    assert code == 0
    assert out.splitlines() == [
        "MODEL                     VERSIONS",
        "a-rather-long-model-name  1",
        "b                         1, 2",
    ]


# infer: inputs and credentials (no network: these fail before any request).


@pytest.mark.parametrize(
    ("item", "specs", "expected"),
    [
        ("@x.npy", ["input"], ("input", "@x.npy")),
        ("[[1,2,3,4]]", ["input"], ("input", "[[1,2,3,4]]")),
        ("5.1,3.5", ["input"], ("input", "5.1,3.5")),
        ("input=@x.json", ["input"], ("input", "@x.json")),
        ("b=@x=y.npy", ["a", "b"], ("b", "@x=y.npy")),
        ('{"data": [1], "shape": [1]}', ["input"], ("input", '{"data": [1], "shape": [1]}')),
    ],
)
def test_infer_input_may_leave_out_the_name_of_a_models_only_input(
    item: str, specs: list[str], expected: tuple[str, str]
) -> None:
    from modelship.tools.cli import _input_argument

    assert _input_argument(item, "m", {name: {} for name in specs}) == expected


@pytest.mark.parametrize(
    ("item", "specs", "message"),
    [
        ("@x.npy", ["a", "b"], "error: --input '@x.npy' names no input, and m has 2 inputs (a, b): write"),
        ("c=1", ["a", "b"], "error: m has no input 'c'; inputs: a, b"),
    ],
)
def test_infer_input_without_a_name_for_several_inputs_is_explained(
    item: str, specs: list[str], message: str
) -> None:
    from modelship.tools.cli import _input_argument

    with pytest.raises(SystemExit) as raised:
        _input_argument(item, "m", {name: {} for name in specs})
    assert str(raised.value.code).startswith(message)


def test_input_files_that_cannot_be_used_are_explained(tmp_path: Path) -> None:
    (tmp_path / "no-data.json").write_bytes(b'{"shape": [1, 4]}')
    (tmp_path / "broken.json").write_bytes(b"[1, 2")
    (tmp_path / "model.npy").write_bytes(b"not numpy")
    cases = {
        "no-data.json": 'holds an object without "data"',
        "broken.json": "is not valid JSON",
        "missing.npy": "cannot read",
        "model.npy": "is not a numeric .npy file",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_input_value(f"@{tmp_path / name}", "FP32", 2)


def test_sigv4_without_credentials_says_so_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    argv = ["infer", "--url", "http://127.0.0.1:9", "--model", "m", "--input", "[1]", "--sigv4"]
    code, out, err = _run(argv, capsys)
    assert code == 1
    assert out == ""
    assert err.startswith("error: no AWS credentials found for --sigv4: set AWS_ACCESS_KEY_ID")
    assert "HTTP 0" not in err
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    code, _, err = _run(argv, capsys)
    assert code == 1
    assert err.strip() == (
        "error: no AWS credentials found for --sigv4: The config profile (no-such-profile) could not be found"
    )


# `make serve`'s lean install has no boto3.


def test_an_s3_store_without_boto3_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` meets in the serve-only venv
    code, _, err = _run(["list", "--store", "s3://a-bucket/models"], capsys)
    assert code != 0
    assert (
        err.strip()
        == "error: s3:// stores need boto3, which this install lacks: pip install -e '.[s3]' (or make venv)"
    )
    assert "Traceback" not in err
