"""A user's mistakes get a one-line error that says what to do, never a traceback or a silent success."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelship.core.default_model import export_default_model
from modelship.core.errors import InvalidModel
from modelship.core.repository import ModelRepository
from modelship.tools.cli import main
from modelship.tools.client import InferenceClient, parse_input_value


@pytest.mark.parametrize(
    ("value", "datatype", "message"),
    [
        ("[[6.7,3.0,5.2,2.3]", "FP32", "not valid JSON"),
        ('[["a","b","c","d"]]', "FP32", "the values are not FP32"),
        ("1,2,x", "FP32", "expected numbers, a JSON array, or @file"),
    ],
)
def test_infer_input_mistakes_are_explained(value: str, datatype: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_input_value(value, datatype, 2)
    assert "np.str_" not in str(raised.value)


def test_the_url_the_server_prints_works_as_the_clients_base_url() -> None:
    assert InferenceClient("http://127.0.0.1:8080/v2").base_url == "http://127.0.0.1:8080"
    assert InferenceClient("http://127.0.0.1:8080/v2/").base_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "--store", "s3:/bucket"], "unsupported store URI 's3:/bucket'"),
        (["list", "--store", "{missing}"], "does not exist (modelship push creates it)"),
        (["serve", "--store", "{missing}", "--port", "1"], "does not exist (modelship push creates it)"),
    ],
)
def test_store_typos_are_errors_not_empty_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [part.replace("{missing}", str(tmp_path / "no-such-store")) for part in argv]
    try:
        code: object = main(argv)
        said = ""
    except SystemExit as stopped:
        code, said = stopped.code, str(stopped.code)
    assert code not in (0, None)
    assert message in said + capsys.readouterr().err


def test_an_impossible_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["serve", "--port", "99999"])
    assert raised.value.code == 2
    assert "a port is a number from 1 to 65535" in capsys.readouterr().err


def test_labels_must_match_the_classes_of_an_output(tmp_path: Path) -> None:
    model_path, _, labels = export_default_model(tmp_path / "model")
    repository = ModelRepository.open(str(tmp_path / "store"))
    with pytest.raises(InvalidModel, match="2 labels, but the model's outputs have 3 classes"):
        repository.push(model_path, "iris", labels=labels[:2])
    assert repository.push(model_path, "iris", labels=labels).labels == tuple(labels)
