from __future__ import annotations

import pytest
from modelship.core.errors import BadRequest
from modelship.core.names import parse_version, validate_model_name


@pytest.mark.parametrize("name", ["iris", "a", "ResNet-50_v1.5", "x" * 128, "0model"])
def test_accepts_valid_names(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "   ",
        "..",
        "a..b",
        "../etc",
        "a/b",
        "a\\b",
        "-lead",
        ".hidden",
        "x" * 129,
        "tab\t",
        "é",
        "a b",
    ],
)
def test_rejects_invalid_names(name: str) -> None:
    with pytest.raises(BadRequest, match="invalid model name"):
        validate_model_name(name)


@pytest.mark.parametrize("text,expected", [("1", 1), ("42", 42), ("2147483647", 2147483647)])
def test_parses_versions(text: str, expected: int) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["0", "01", "-1", "1.5", "", "abc", "2147483648", "99999999999", "٣"])
def test_rejects_invalid_versions(text: str) -> None:
    with pytest.raises(BadRequest, match="invalid model version"):
        parse_version(text)
