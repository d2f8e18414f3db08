"""Compression in transit, in process: bytes on the wire and time, with and without gzip.

For a 224x224x3 FP32 image and a tiny 1x16 input, in JSON and in the binary extension, one request goes
through ``modelship.doors.apigw.handle_event`` (the translation every door runs) to an identity model,
so the answer is as large as the request: once plain, once with the body gzipped
(``Content-Encoding: gzip``) and the answer asked for in gzip (``Accept-Encoding: gzip``). Reported per
case: the request's and the answer's bytes as sent, the handler's p50 time (inflating the request,
inference, encoding and compressing the answer), and what the client pays to compress its request and
inflate the answer. The image is a real photo's statistics only approximately: 8-bit values scaled to
[0, 1), as an image pipeline sends them; random float noise would barely compress at all.

    python bench/compression.py [--quick] [--out build/bench/compression.json]   # markdown on stdout

``rows()`` and ``section_markdown(rows)`` are what ``bench/run.py`` and ``bench/report.py`` call.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "functions") not in sys.path:
    sys.path.insert(0, str(ROOT / "functions"))

PAYLOADS = {"image 224x224x3": (1, 224, 224, 3), "tiny 1x16": (1, 16)}


def log(message: str) -> None:
    print(f"[bench compression] {message}", file=sys.stderr, flush=True)


def identity_model(shape: tuple[int, ...]) -> bytes:
    from onnx import TensorProto, helper

    dims: list[int | str] = ["batch", *shape[1:]]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    data: bytes = model.SerializeToString()
    return data


def example(shape: tuple[int, ...]) -> np.ndarray:
    pixels = np.random.default_rng(7).integers(0, 256, size=shape)
    return (pixels / 256).astype(np.float32)


def p50_us(call: Callable[[], Any], repeats: int) -> float:
    call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - started)
    return float(np.percentile(samples, 50)) / 1000


def interleaved(calls: dict[bool, Callable[[], Any]], repeats: int) -> dict[bool, float]:
    """p50 in µs of each call, timed one of each per round, the first rotated each round."""
    keys = list(calls)
    for key in keys:
        calls[key]()
    samples: dict[bool, list[int]] = {key: [] for key in keys}
    for round_index in range(repeats):
        for offset in range(len(keys)):
            key = keys[(round_index + offset) % len(keys)]
            started = time.perf_counter_ns()
            calls[key]()
            samples[key].append(time.perf_counter_ns() - started)
    return {key: float(np.percentile(values, 50)) / 1000 for key, values in samples.items()}


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """One row per (payload, encoding, gzip): bytes and p50 times."""
    from modelship.core.repository import ModelRepository
    from modelship.core.service import InferenceService
    from modelship.core.settings import Settings
    from modelship.doors.apigw import handle_event
    from modelship.doors.compression import GZIP, MIN_COMPRESSED_BYTES, compress
    from modelship.tools.client import encode_request

    workdir = Path(tempfile.mkdtemp(prefix="modelship-bench-compression-"))
    try:
        repository = ModelRepository.open(str(workdir / "store"))
        names = {}
        for index, (label, shape) in enumerate(PAYLOADS.items()):
            name = f"identity{index}"
            path = workdir / f"{name}.onnx"
            path.write_bytes(identity_model(shape))
            repository.push(path, name)
            names[label] = name
        service = InferenceService.from_settings(
            Settings(
                store_uri=str(workdir / "store"),
                cache_dir=workdir / "cache",
                isolate_loads=False,
                intra_op_threads=1,
                max_request_bytes=64 << 20,
                max_response_bytes=64 << 20,
            )
        )
        results: list[dict[str, Any]] = []
        for label, shape in PAYLOADS.items():
            array = example(shape)
            big = array.size > 1000
            repeats = (10 if quick else 40) if big else (200 if quick else 2000)
            for binary in (False, True):
                body, headers = encode_request({"x": array}, {"x": "FP32"}, binary=binary, outputs=["y"])
                events = {}
                for gzipped in (False, True):
                    # As modelship's client: gzip asked for, and the body gzipped when over the threshold.
                    request_headers = dict(headers)
                    sent = body
                    if gzipped:
                        request_headers["Accept-Encoding"] = GZIP
                        if len(body) > MIN_COMPRESSED_BYTES:
                            sent = compress(body, GZIP)
                            request_headers["Content-Encoding"] = GZIP
                    events[gzipped] = (sent, _event(names[label], sent, request_headers))
                # Plain and gzip run interleaved, so that a neighbour's load lands on both alike.
                times = interleaved(
                    {
                        gzipped: functools.partial(handle_event, service, event)
                        for gzipped, (_, event) in events.items()
                    },
                    repeats,
                )
                for gzipped, (sent, event) in events.items():
                    result = handle_event(service, event)
                    if result["statusCode"] != 200:
                        raise RuntimeError(f"{label}: {result['statusCode']} {result['body'][:200]}")
                    answer = _answer_bytes(result)
                    coded = result["headers"].get("Content-Encoding") == GZIP
                    client_us = 0.0
                    if sent is not body:
                        client_us += p50_us(functools.partial(compress, body, GZIP), repeats)
                    if coded:
                        client_us += p50_us(functools.partial(gzip.decompress, answer), repeats)
                    results.append(
                        {
                            "payload": label,
                            "encoding": "binary" if binary else "JSON",
                            "gzip": gzipped,
                            "request_bytes": len(sent),
                            "response_bytes": len(answer),
                            "response_gzip": coded,
                            "handler_p50_us": times[gzipped],
                            "client_p50_us": client_us,
                        }
                    )
                    log(f"{label} {'binary' if binary else 'JSON'} gzip={gzipped}: {results[-1]}")
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _event(model: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    import pybase64

    path = f"/v2/models/{model}/infer"
    return {
        "resource": "/v2/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {key: [value] for key, value in headers.items()},
        "requestContext": {"requestId": "bench", "stage": "prod", "path": f"/prod{path}"},
        # As API Gateway with binaryMediaTypes "*/*" hands every body to the function: base64.
        "body": pybase64.b64encode_as_string(body),
        "isBase64Encoded": True,
    }


def _answer_bytes(result: dict[str, Any]) -> bytes:
    import pybase64

    if result["isBase64Encoded"]:
        decoded: bytes = pybase64.b64decode(result["body"])
        return decoded
    encoded: bytes = result["body"].encode()
    return encoded


def _size(count: int) -> str:
    return f"{count:,} B" if count < 10_000 else f"{count / 1024:,.0f} KiB"


def _time(microseconds: float) -> str:
    return f"{microseconds:,.0f} µs" if microseconds < 10_000 else f"{microseconds / 1000:,.1f} ms"


def section_markdown(measured: list[dict[str, Any]] | None, why: str = "not measured") -> list[str]:
    """The report's section: a table of bytes and times, plain against gzip."""
    lines = ["## Compression in transit", ""]
    if not measured:
        return [*lines, f"Not measured: {why}.", ""]
    lines += [
        "One request through `doors.apigw.handle_event` (what every door runs) to an identity model, so the "
        "answer is as large as the request; gzip on means `Content-Encoding: gzip` on the request and "
        "`Accept-Encoding: gzip` (level 1) on the answer, as `modelship infer` sends them. Client time: "
        "compressing the request and inflating the answer. Bodies of 1 KiB or less are never compressed, "
        "so a tiny request pays only for the header. Plain and gzip run interleaved.",
        "",
        "| payload | encoding | gzip | request bytes | answer bytes | handler p50 | client p50 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in measured:
        gzip_text = "yes" if row["gzip"] else "no"
        if row["gzip"] and not row["response_gzip"]:
            gzip_text += " (both under 1 KiB: sent as they are)"
        lines.append(
            f"| {row['payload']} | {row['encoding']} | {gzip_text} | {_size(row['request_bytes'])} | "
            f"{_size(row['response_bytes'])} | {_time(row['handler_p50_us'])} | "
            f"{_time(row['client_p50_us']) if row['gzip'] else '-'} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "compression.json")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    args = parser.parse_args()
    measured = rows(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": measured}, indent=1))
    print("\n".join(section_markdown(measured)))


if __name__ == "__main__":
    main()
