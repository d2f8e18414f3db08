"""scripts/localstack_main.py's API Gateway fix, on werkzeug requests (the class LocalStack's rolo extends).

The LocalStack tier (tests/integration/test_shell_usage.py) checks it end to end through API Gateway.
"""

from __future__ import annotations

import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

ROOT = Path(__file__).resolve().parents[2]
# A body that form parsing and re-encoding change: '+' is decoded to a space, '%41' to 'A'.
BODY = b'{"inputs":[{"name":"in%41","data":[5.1e+0]}]}'
FORM = "application/x-www-form-urlencoded"
# raw_payload(request, rebuild) -> the body to hand the function.
RawPayload = Callable[[Any, Callable[[Any], bytes]], bytes]


@pytest.fixture(scope="module")
def raw_payload() -> RawPayload:
    """The fix itself, from the script LocalStack runs (not a module on this project's path)."""
    function: RawPayload = runpy.run_path(str(ROOT / "scripts" / "localstack_main.py"))["raw_payload"]
    return function


def request(body: bytes, content_type: str) -> Request:
    return Request(EnvironBuilder(method="POST", data=body, content_type=content_type).get_environ())


def rebuilt(request: Any) -> bytes:
    """Stands in for LocalStack's restore_payload: what it would hand the function instead."""
    return b"REBUILT"


@pytest.mark.parametrize("content_type", [FORM, "application/json", "application/octet-stream", ""])
def test_the_body_is_passed_through_as_sent(raw_payload: RawPayload, content_type: str) -> None:
    incoming = request(BODY, content_type)
    assert raw_payload(incoming, rebuilt) == BODY
    # Still parseable as a form afterwards, from the cached bytes, for whatever else reads it.
    if content_type == FORM:
        assert list(incoming.form.keys()) == ['{"inputs":[{"name":"inA","data":[5.1e 0]}]}']


def test_a_form_parsed_before_keeps_localstacks_rebuild(raw_payload: RawPayload) -> None:
    incoming = request(BODY, FORM)
    assert incoming.form  # the stream is consumed: the raw bytes are gone
    assert raw_payload(incoming, rebuilt) == b"REBUILT"


def test_bytes_read_before_the_form_was_parsed_are_still_the_raw_body(raw_payload: RawPayload) -> None:
    incoming = request(BODY, FORM)
    assert incoming.get_data(cache=True) == BODY
    assert incoming.form
    assert raw_payload(incoming, rebuilt) == BODY
