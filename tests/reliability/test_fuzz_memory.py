"""The allocation bound on bodies near the request-size cap: hypothesis draws small recipes (what kind
of payload, how full, which outputs) that expand to bodies of 30-105% of the fuzzed service's 64 KiB
cap, in the shapes that cost the most per byte (many BYTES elements, many JSON values, empty lists and
objects, deep nesting, classification). The bound is MEMORY_FACTOR x max(body, cap) (oracle.py)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelship.core.service import InferenceService

from tests.reliability.figures import FUZZ
from tests.reliability.oracle import FUZZ_CAP, HEADER_LENGTH, KnownBugs, ask, check_answer

pytestmark = pytest.mark.usefixtures("traced")

SAMPLE_VALUE: Final[dict[str, Any]] = {
    "BOOL": True,
    "UINT8": 255,
    "INT16": -7,
    "INT64": 2**62,
    "UINT64": 2**64 - 1,
    "FP16": 0.5,
    "FP32": 1.25,
    "FP64": 0.1,
}
ITEMSIZE: Final = {
    "BOOL": 1,
    "UINT8": 1,
    "INT16": 2,
    "INT64": 8,
    "UINT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}
KINDS: Final = (
    "binary-bytes",
    "json-bytes",
    "json-numbers",
    "json-nested-numbers",
    "binary-numbers",
    "json-fillers",
    "classification",
    "deep-nesting",
    "many-keys",
    "long-id",
)
Request = tuple[str, bytes, dict[str, str]]


@dataclass(frozen=True)
class Recipe:
    """What to build: small enough for hypothesis to print; ``build`` expands it to the request."""

    kind: str
    fill: float
    binary_output: bool
    datatype: str
    item: str
    k: int

    @property
    def target(self) -> int:
        return int(FUZZ_CAP * self.fill)

    def build(self) -> Request:
        return getattr(self, "_" + self.kind.replace("-", "_"))()  # type: ignore[no-any-return]

    def _outputs(self, **parameters: Any) -> list[dict[str, Any]]:
        return [{"name": "y", "parameters": {"binary_data": self.binary_output, **parameters}}]

    def _binary(self, path: str, datatype: str, rows: int, raw: bytes, **parameters: Any) -> Request:
        inputs = [tensor("x", rows, 3, datatype, parameters={"binary_data_size": len(raw)})]
        header = orjson.dumps({"inputs": inputs, "outputs": self._outputs(**parameters)})
        return path, header + raw, {HEADER_LENGTH: str(len(header))}

    def _binary_bytes(self) -> Request:
        item = self.item.encode()
        rows = self.target // (3 * (4 + len(item)))
        raw = (struct.pack("<I", len(item)) + item) * (rows * 3)
        return self._binary("/v2/models/identity_bytes/infer", "BYTES", rows, raw)

    def _json_bytes(self) -> Request:
        rows = self.target // (3 * (len(orjson.dumps(self.item)) + 1))
        inputs = [tensor("x", rows, 3, "BYTES", data=[self.item] * (rows * 3))]
        return (
            "/v2/models/identity_bytes/infer",
            orjson.dumps({"inputs": inputs, "outputs": self._outputs()}),
            {},
        )

    def _numbers(self, nested: bool) -> Request:
        value = SAMPLE_VALUE[self.datatype]
        rows = self.target // (3 * (len(orjson.dumps(value)) + 1))
        data: Any = [[value] * 3] * rows if nested else [value] * (rows * 3)
        body = orjson.dumps(
            {"inputs": [tensor("x", rows, 3, self.datatype, data=data)], "outputs": self._outputs()}
        )
        return f"/v2/models/identity_{self.datatype.lower()}/infer", body, {}

    def _json_numbers(self) -> Request:
        return self._numbers(nested=False)

    def _json_nested_numbers(self) -> Request:
        return self._numbers(nested=True)

    def _binary_numbers(self) -> Request:
        rows = self.target // (3 * ITEMSIZE[self.datatype])
        raw = b"\x01" * (rows * 3 * ITEMSIZE[self.datatype])
        return self._binary(f"/v2/models/identity_{self.datatype.lower()}/infer", self.datatype, rows, raw)

    def _json_fillers(self) -> Request:
        # Tens of thousands of empty lists, empty objects or nulls where numbers or strings belong: 400s.
        fillers: dict[str, Any] = {"lists": [], "objects": {}, "nulls": None}
        filler = fillers.get(self.item, [])
        model, name, datatype, width = {
            "BOOL": ("identity_bytes", "x", "BYTES", 3),
            "UINT64": ("identity_uint64", "x", "UINT64", 3),
        }.get(self.datatype, ("iris", "input", "FP32", 4))
        data = [filler] * (self.target // (len(orjson.dumps(filler)) + 1))
        return (
            f"/v2/models/{model}/infer",
            orjson.dumps({"inputs": [tensor(name, 1, width, datatype, data=data)]}),
            {},
        )

    def _classification(self) -> Request:
        if self.datatype in ("BOOL", "UINT8", "FP16", "FP32"):
            rows = self.target // (3 * ITEMSIZE[self.datatype])
            raw = b"\x01" * (rows * 3 * ITEMSIZE[self.datatype])
            path = f"/v2/models/identity_{self.datatype.lower()}/infer"
            return self._binary(path, self.datatype, rows, raw, classification=self.k)
        rows = self.target // 8
        outputs = [
            {
                "name": "probabilities",
                "parameters": {"classification": self.k, "binary_data": self.binary_output},
            },
            {"name": "label", "parameters": {"classification": self.k}},
        ]
        inputs = [tensor("input", rows, 4, "FP32", data=[0] * (rows * 4))]
        return "/v2/models/iris/infer", orjson.dumps({"inputs": inputs, "outputs": outputs}), {}

    def _deep_nesting(self) -> Request:
        depth = max(self.target // 2 - 64, 1)
        data = b"[" * depth + b"]" * depth
        body = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":' + data + b"}]}"
        return "/v2/models/iris/infer", body, {}

    def _many_keys(self) -> Request:
        document: dict[str, Any] = {"inputs": [tensor("input", 1, 4, "FP32", data=[1, 2, 3, 4])]}
        document.update({f"k{i}": i for i in range(self.target // 12)})
        return "/v2/models/iris/infer", orjson.dumps(document), {}

    def _long_id(self) -> Request:
        document = {
            "id": self.item * (self.target // max(len(self.item), 1)),
            "inputs": [tensor("input", 1, 4, "FP32", data=[1, 2, 3, 4])],
        }
        return "/v2/models/iris/infer", orjson.dumps(document), {}


def tensor(name: str, rows: int, width: int, datatype: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "shape": [rows, width], "datatype": datatype, **fields}


recipes = st.builds(
    Recipe,
    kind=st.sampled_from(KINDS),
    fill=st.floats(0.3, 1.05),
    binary_output=st.booleans(),
    datatype=st.sampled_from(sorted(SAMPLE_VALUE)),
    item=st.sampled_from(["", "a", "ab", "abc", "é", "\u4e00", "x" * 40, "lists", "objects", "nulls"]),
    k=st.integers(1, 4),
)


@given(recipe=recipes)
def test_allocations_near_the_cap_stay_bounded(
    fuzz_service: InferenceService, known_bugs: KnownBugs, recipe: Recipe
) -> None:
    stats = FUZZ.property("memory.near_cap")
    stats.examples += 1
    path, body, headers = recipe.build()
    may_hit = "classification-amplification" if recipe.kind == "classification" else None
    answer = ask(fuzz_service, "POST", path, headers, body, known_bugs, stats, may_hit=may_hit)
    check_answer(answer, known_bugs, stats)
