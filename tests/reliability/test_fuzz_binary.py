"""Property-based fuzzing of the binary tensor data extension: the BYTES element codec (wire.py) on
random bytes, and whole binary requests (random sections, declared sizes, header lengths and BYTES
element encodings) against a decoder written here from the protocol's text, and onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelship.core.service import InferenceService
from modelship.core.wire import MalformedBytesTensor, decode_bytes_elements, encode_bytes_elements

from tests.reliability.figures import FUZZ, PropertyStats
from tests.reliability.oracle import (
    HEADER_LENGTH,
    KnownBugs,
    ModelSpec,
    OutputRequest,
    Reference,
    ask,
    check_answer,
    check_matches_reference,
)
from tests.reliability.strategies import (
    bytes_items,
    bytes_sections,
    clean_text,
    decode_elements,
    elements,
    encode_json,
    json_data,
    make_array,
    output_plans,
)
from tests.support.oip import NUMPY_BY_DATATYPE

pytestmark = pytest.mark.usefixtures("traced")


def start(name: str) -> PropertyStats:
    stats = FUZZ.property(name)
    stats.examples += 1
    return stats


@given(raw=st.binary(max_size=64) | st.integers(0, 6).flatmap(bytes_sections))
def test_bytes_elements_decode_exactly_or_refuse(raw: bytes) -> None:
    start("binary.wire_decode")
    expected = decode_elements(raw)
    try:
        items = decode_bytes_elements(raw)
    except MalformedBytesTensor:
        assert expected is None, raw
        return
    assert items == expected
    array = np.empty(len(items), dtype=object)
    array[:] = items
    assert encode_bytes_elements(array) == raw


@given(items=st.lists(clean_text | bytes_items, max_size=12))
def test_bytes_elements_round_trip(items: list[Any]) -> None:
    start("binary.wire_round_trip")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    encoded = encode_bytes_elements(array)
    assert decode_bytes_elements(encoded) == [i.encode() if isinstance(i, str) else i for i in items]


@dataclass
class BinaryCase:
    spec: ModelSpec
    body: bytes
    headers: dict[str, str]
    # None when the request is invalid: the server must answer 400.
    feeds: dict[str, np.ndarray] | None
    outputs: list[OutputRequest]
    request_id: str | None


def decode_section(
    entries: list[dict[str, Any]], json_feeds: dict[str, np.ndarray], binary: bytes
) -> dict[str, np.ndarray] | None:
    """The inputs as the protocol defines them: each binary input is the next binary_data_size bytes
    of the section after the JSON, which the inputs must exactly fill. None where it is invalid."""
    feeds, offset = {}, 0
    for entry in entries:
        name, datatype, shape = entry["name"], entry["datatype"], tuple(entry["shape"])
        if name in json_feeds:
            feeds[name] = json_feeds[name]
            continue
        size = entry["parameters"]["binary_data_size"]
        if type(size) is not int or size < 0 or offset + size > len(binary):
            return None
        chunk, offset = binary[offset : offset + size], offset + size
        count = int(np.prod(shape))
        if datatype == "BYTES":
            items = decode_elements(chunk)
            if items is None or len(items) != count:
                return None
            try:
                feeds[name] = make_array([item.decode("utf-8") for item in items], datatype, shape)
            except UnicodeDecodeError:
                return None
        else:
            dtype = np.dtype(NUMPY_BY_DATATYPE[datatype])
            if size != count * dtype.itemsize or (datatype == "BOOL" and any(byte > 1 for byte in chunk)):
                return None
            feeds[name] = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    return feeds if offset == len(binary) else None


@st.composite
def binary_cases(draw: st.DrawFn, specs: dict[str, ModelSpec]) -> BinaryCase:
    spec = specs[draw(st.sampled_from(sorted(specs)))]
    batch = draw(st.integers(0, 4))
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    json_feeds: dict[str, np.ndarray] = {}
    for tensor in draw(st.permutations(spec.inputs)):
        shape = tuple(batch if dim < 0 else dim for dim in tensor.shape)
        count = int(np.prod(shape))
        entry: dict[str, Any] = {"name": tensor.name, "shape": list(shape), "datatype": tensor.datatype}
        entries.append(entry)
        if len(spec.inputs) > 1 and draw(st.integers(0, 3)) == 0:
            values = draw(st.lists(elements(tensor.datatype, finite=True), min_size=count, max_size=count))
            json_feeds[tensor.name] = make_array(values, tensor.datatype, shape)
            entry["data"] = json_data(json_feeds[tensor.name], tensor.datatype, False, False)
            continue
        if tensor.datatype == "BYTES":
            raw = draw(bytes_sections(count))
        elif tensor.datatype == "BOOL" and draw(st.booleans()):
            raw = bytes(draw(st.lists(st.sampled_from([0, 1]), min_size=count, max_size=count)))
            raw += draw(st.sampled_from([b"", b"", b"\x02", b"\x00"]))
        else:
            size = count * np.dtype(NUMPY_BY_DATATYPE[tensor.datatype]).itemsize
            exact = st.binary(min_size=size, max_size=size)
            raw = draw(exact | exact | st.binary(max_size=size + 8))
        chunks.append(raw)
        declared: Any = len(raw)
        how = draw(st.sampled_from(["actual"] * 6 + ["shifted", "other"]))
        if how == "shifted":
            declared = max(len(raw) + draw(st.integers(-4, 4)), 0)
        elif how == "other":
            declared = draw(
                st.sampled_from([-1, True, 1.5, float(len(raw)), str(len(raw)), None, 2**64, 2**31])
            )
        entry["parameters"] = {"binary_data_size": declared}
    document: dict[str, Any] = {"inputs": entries}
    request_id, outputs = draw(output_plans(spec, document))
    header = encode_json(document)
    binary = b"".join(chunks) + draw(st.sampled_from([b""] * 8 + [b"\x00", b"tail"]))
    header_length = len(header) + draw(st.sampled_from([0] * 8 + [-1, 1, 4]))
    feeds = decode_section(entries, json_feeds, binary) if header_length == len(header) else None
    return BinaryCase(
        spec, header + binary, {HEADER_LENGTH: str(max(header_length, 0))}, feeds, outputs, request_id
    )


@given(data=st.data())
def test_binary_requests_match_an_independent_decoder(
    fuzz_service: InferenceService,
    specs: dict[str, ModelSpec],
    reference: Reference,
    known_bugs: KnownBugs,
    data: st.DataObject,
) -> None:
    stats = start("binary.requests")
    case = data.draw(binary_cases(specs))
    answer = ask(fuzz_service, "POST", case.spec.route, case.headers, case.body, known_bugs, stats)
    if not check_answer(answer, known_bugs, stats):
        return
    if case.feeds is None:
        assert answer.status == 400, (answer.status, answer.body[:300])
    else:
        check_matches_reference(answer, case.spec, case.feeds, case.outputs, case.request_id, reference)
