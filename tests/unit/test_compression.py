"""Content codings (doors/compression.py) and the API Gateway door with them: Accept-Encoding's q-values,
request bodies inflated within the cap (a bomb is refused without inflating past it), gzip responses as
Lambda returns them (base64, isBase64Encoded), and the binary extension's header length."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from typing import Any

import numpy as np
import orjson
import pybase64
import pytest
from modelship.core.errors import BadRequest, PayloadTooLarge
from modelship.core.service import InferenceService
from modelship.doors import compression
from modelship.doors.apigw import handle_event
from modelship.doors.compression import (
    MAX_GZIP_MEMBERS,
    MIN_COMPRESSED_BYTES,
    UnsupportedContentEncoding,
    decode_body,
    encode_body,
    response_coding,
)

from tests.support.events import load_event


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("gzip", "gzip"),
        ("GZip", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip, deflate, br", "gzip"),
        ("br", None),
        ("identity", None),
        ("", None),
        ("gzip;q=0", None),
        ("gzip; q=0.000", None),
        ("gzip;q=0.001", "gzip"),
        ("gzip ; Q=1", "gzip"),
        ("gzip;q=1.5", None),  # not a qvalue: not acceptable
        ("gzip;q=abc", None),
        ("gzip;q=0.5, deflate", "deflate"),
        ("deflate;q=0.5, gzip;q=0.5", "gzip"),
        ("deflate", "deflate"),
        ("*", "gzip"),
        ("*;q=0", None),
        ("gzip;q=0, *", "deflate"),
        ("gzip;q=0, deflate;q=0, *", None),
        ("*;q=0, gzip", "gzip"),
        ("x-gzip;q=0, gzip;q=0.3", "gzip"),
        (",,, ;q=1, gzip", "gzip"),
        ("gzip;q=0.1_1", None),  # float() would take these; RFC 9110's qvalue does not
        ("gzip;q=1.0e0", None),
        ("gzip;q=1.000", "gzip"),
        ("gzip;q=1.001", None),
    ],
)
def test_accept_encoding_q_values(accept_encoding: str, expected: str | None) -> None:
    assert response_coding(accept_encoding) == expected


def test_small_bodies_and_incompressible_ones_go_out_as_they_are() -> None:
    small = b"{" + b" " * (MIN_COMPRESSED_BYTES - 2) + b"}"
    assert encode_body(small, "gzip") == (small, None)
    noise = np.random.default_rng(0).bytes(4 * MIN_COMPRESSED_BYTES)
    assert encode_body(noise, "gzip") == (noise, None)
    text = b'{"data":[' + b"0.5," * 1000 + b"0.5]}"
    assert encode_body(text, None) == (text, None)
    assert encode_body(text, "gzip;q=0") == (text, None)
    body, coding = encode_body(text, "gzip")
    assert coding == "gzip" and gzip.decompress(body) == text
    body, coding = encode_body(text, "deflate")
    assert coding == "deflate" and zlib.decompress(body) == text


def test_request_codings_are_inflated() -> None:
    text = b'{"inputs": []}'
    assert decode_body(gzip.compress(text), "gzip", 100) == text
    assert decode_body(gzip.compress(text), "X-GZIP", 100) == text
    assert decode_body(zlib.compress(text), "deflate", 100) == text
    assert decode_body(text, "identity", 100) == text
    # Several gzip members one after another are one gzip body (RFC 1952).
    assert decode_body(gzip.compress(text[:5]) + gzip.compress(text[5:]), "gzip", 100) == text


def test_gzip_members_are_bounded() -> None:
    text = b'{"inputs": []}'
    member = gzip.compress(b" ")
    assert decode_body(member * (MAX_GZIP_MEMBERS - 1) + gzip.compress(text), "gzip", 1000).endswith(text)
    with pytest.raises(BadRequest, match=f"more than {MAX_GZIP_MEMBERS} gzip members"):
        decode_body(member * MAX_GZIP_MEMBERS + gzip.compress(text), "gzip", 1000)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_members_and_their_ends_are_found_across_chunk_boundaries(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zlib is fed the body in chunks: a member's end, the next one's magic, trailing bytes and a cut
    stream are found wherever a chunk boundary falls."""
    monkeypatch.setattr(compression, "_INFLATE_CHUNK_BYTES", chunk)
    parts = [b'{"inputs": ', b"[]", b"}"]
    body = b"".join(gzip.compress(part) for part in parts)
    assert decode_body(body, "gzip", 1000) == b"".join(parts)
    assert decode_body(zlib.compress(b"".join(parts)), "deflate", 1000) == b"".join(parts)
    with pytest.raises(BadRequest, match="has 8 bytes after its gzip stream"):
        decode_body(body + b"\x1fgarbage", "gzip", 1000)
    with pytest.raises(BadRequest, match="has 1 bytes after its gzip stream"):
        decode_body(body + b"\x1f", "gzip", 1000)
    with pytest.raises(BadRequest, match="truncated"):
        decode_body(body[:-3], "gzip", 1000)


def test_a_body_api_gateway_already_inflated_passes_as_it_is() -> None:
    """API Gateway REST inflates the request but forwards Content-Encoding: JSON never starts like gzip
    or zlib, so such a body is taken as decoded."""
    text = b'{"inputs": []}'
    assert decode_body(text, "gzip", 100) == text
    assert decode_body(text, "deflate", 100) == text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (gzip.compress(b"{}" * 50)[:-6], "truncated"),
        (b"\x1f\x8b\x08\x00garbage-garbage", "not valid gzip"),
        (gzip.compress(b"{}") + b"trailing", "after its gzip stream"),
    ],
    ids=["truncated", "corrupt", "trailing"],
)
def test_a_body_that_does_not_inflate_is_a_400(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_body(body, "gzip", 1000)


@pytest.mark.parametrize("coding", ["br", "compress", "gzip, gzip", "zstd"])
def test_other_codings_are_a_415(coding: str) -> None:
    with pytest.raises(UnsupportedContentEncoding) as caught:
        decode_body(b"x", coding, 100)
    assert caught.value.status == 415


def test_a_gzip_bomb_is_refused_without_inflating_past_the_cap() -> None:
    """64 MiB of zeros in about 64 KB of gzip, against a 1 MiB cap: refused, and the memory allocated on
    the way stays within the cap's arithmetic (at most twice the cap plus one byte, and zlib's window),
    nowhere near what the bomb holds."""
    cap = 1 << 20
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)
    assert len(bomb) < 128 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match="inflates to more than the 1048576-byte limit"):
            decode_body(bomb, "gzip", cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * cap + 256 * 1024, peak
    # Exactly at the cap is still served.
    assert len(decode_body(gzip.compress(bytes(cap)), "gzip", cap)) == cap


# --- through the API Gateway door -----------------------------------------------------------------------

ROWS = 200  # identity_fp32 is [batch, 3]: 200 rows of JSON output is well over the threshold


def infer_event(body: bytes, headers: dict[str, str], *, base64: bool) -> dict[str, Any]:
    event = load_event("infer_json.json")
    event["path"] = "/v2/models/identity_fp32/infer"
    event["headers"] = headers
    event["multiValueHeaders"] = {key: [value] for key, value in headers.items()}
    event["body"] = pybase64.b64encode_as_string(body) if base64 else body.decode()
    event["isBase64Encoded"] = base64
    return event


def rows() -> np.ndarray:
    return np.arange(ROWS * 3, dtype=np.float32).reshape(ROWS, 3) / 7


def json_request() -> bytes:
    data = rows()
    return orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": list(data.shape), "datatype": "FP32", "data": data.ravel().tolist()}
            ]
        }
    )


def response_body(result: dict[str, Any]) -> bytes:
    raw = pybase64.b64decode(result["body"]) if result["isBase64Encoded"] else result["body"].encode()
    if result["headers"].get("Content-Encoding") == "gzip":
        return gzip.decompress(raw)
    return raw


def test_the_same_request_plain_and_compressed_gets_the_same_answer(service: InferenceService) -> None:
    body = json_request()
    plain = handle_event(service, infer_event(body, {}, base64=False))
    squeezed = handle_event(
        service,
        infer_event(
            gzip.compress(body), {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"}, base64=True
        ),
    )
    assert plain["statusCode"] == squeezed["statusCode"] == 200
    assert "Content-Encoding" not in plain["headers"] and not plain["isBase64Encoded"]
    assert plain["headers"]["Vary"] == "Accept-Encoding"
    assert squeezed["headers"]["Content-Encoding"] == "gzip"
    assert squeezed["headers"]["Vary"] == "Accept-Encoding"
    assert squeezed["isBase64Encoded"] is True
    assert len(pybase64.b64decode(squeezed["body"])) < len(plain["body"]) / 2
    assert response_body(squeezed) == response_body(plain)


def test_api_gateway_inflated_request_with_its_header_still_on(service: InferenceService) -> None:
    body = json_request()
    result = handle_event(service, infer_event(body, {"Content-Encoding": "gzip"}, base64=False))
    assert result["statusCode"] == 200, result["body"]


def test_binary_responses_keep_the_uncompressed_header_length(service: InferenceService) -> None:
    """As Triton: Inference-Header-Content-Length counts the JSON header of the uncompressed body, in the
    request and in the response."""
    data = rows()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(data.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": data.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    body = header + data.tobytes()
    length = {"Inference-Header-Content-Length": str(len(header))}
    plain = handle_event(service, infer_event(body, length, base64=True))
    squeezed = handle_event(
        service,
        infer_event(
            gzip.compress(body),
            {**length, "Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
            base64=True,
        ),
    )
    assert plain["statusCode"] == squeezed["statusCode"] == 200
    assert squeezed["headers"]["Content-Encoding"] == "gzip"
    split = int(squeezed["headers"]["Inference-Header-Content-Length"])
    assert split == int(plain["headers"]["Inference-Header-Content-Length"])
    inflated = response_body(squeezed)
    assert inflated == response_body(plain)
    assert orjson.loads(inflated[:split])["outputs"][0]["parameters"]["binary_data_size"] == data.nbytes
    np.testing.assert_array_equal(np.frombuffer(inflated[split:], np.float32).reshape(data.shape), data)


def test_accept_encoding_that_refuses_gzip_gets_identity(service: InferenceService) -> None:
    body = json_request()
    for refusal in ("gzip;q=0", "identity", "br"):
        result = handle_event(service, infer_event(body, {"Accept-Encoding": refusal}, base64=False))
        assert result["statusCode"] == 200
        assert "Content-Encoding" not in result["headers"] and not result["isBase64Encoded"]


def test_small_answers_carry_no_vary(service: InferenceService) -> None:
    event = infer_event(b"", {"Accept-Encoding": "gzip"}, base64=False)
    event["httpMethod"], event["path"], event["body"] = "GET", "/v2/health/live", None
    result = handle_event(service, event)
    assert result["statusCode"] == 200
    assert "Vary" not in result["headers"] and "Content-Encoding" not in result["headers"]


def test_request_coding_errors_are_json(service: InferenceService) -> None:
    cases = [
        ({"Content-Encoding": "br"}, b"\x00\x01", 415),
        ({"Content-Encoding": "gzip"}, b"\x1f\x8b\x08\x00garbage", 400),
        ({"Content-Encoding": "gzip"}, gzip.compress(bytes(service.settings.max_request_bytes + 1)), 413),
    ]
    for headers, body, status in cases:
        result = handle_event(service, infer_event(body, headers, base64=True))
        assert result["statusCode"] == status, result["body"]
        assert orjson.loads(result["body"])["error"]
