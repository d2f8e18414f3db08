"""Warm-path overhead of modelship over raw ``session.run``, measured side by side in one run.

Reports per-call medians for: raw onnxruntime, the core (``InferenceService.handle``), the API Gateway
translation (``apigw.handle_event``) and the full Lambda handler with Powertools, for a tiny model
(1x16 Add) and a heavier MLP, in JSON and binary modes. No timing is asserted anywhere: read the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pybase64

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "functions"))


def tiny_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
    )
    serialized: bytes = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10
    ).SerializeToString()
    return serialized


def mlp_model(width: int = 1024, depth: int = 4) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "x"
    for layer in range(depth):
        weight = numpy_helper.from_array(
            (rng.standard_normal((width, width)) * 0.02).astype(np.float32), f"w{layer}"
        )
        inits.append(weight)
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"h{layer}"]))
        previous = f"h{layer}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    serialized: bytes = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10
    ).SerializeToString()
    return serialized


def interleaved_medians(functions: list[Callable[[], Any]], repeat: int) -> list[float]:
    """Per-call medians in microseconds, timing the functions in turn within each round so that drift
    in clock speed or neighbours' load lands on all of them alike."""
    for _ in range(min(100, repeat)):
        for function in functions:
            function()
    samples: list[list[float]] = [[] for _ in functions]
    clock = time.perf_counter
    for _ in range(repeat):
        for index, function in enumerate(functions):
            started = clock()
            function()
            samples[index].append(clock() - started)
    return [statistics.median(times) * 1e6 for times in samples]


def proxy_event(name: str, array: np.ndarray, *, binary: bool) -> dict[str, Any]:
    """The API Gateway event for one request, encoded by modelship's own client."""
    from modelship.tools.client import encode_request

    body, headers = encode_request({"x": array}, {"x": "FP32"}, binary=binary, outputs=None)
    return {
        "httpMethod": "POST",
        "path": f"/v2/models/{name}/infer",
        "headers": headers,
        "body": pybase64.b64encode(body).decode() if binary else body.decode(),
        "isBase64Encoded": binary,
        "requestContext": {"requestId": "bench"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3000, help="timed calls per case (tiny model)")
    args = parser.parse_args()
    store = tempfile.mkdtemp(prefix="modelship-bench-")
    os.environ.update(
        {
            "MODELSHIP_STORE": store,
            "MODELSHIP_PRELOAD": "tiny,mlp",
            "POWERTOOLS_METRICS_NAMESPACE": "Bench",
            "POWERTOOLS_SERVICE_NAME": "bench",
        }
    )
    os.environ.setdefault("MODELSHIP_INTRA_OP_THREADS", "1")
    from modelship.core.repository import ModelRepository

    repository = ModelRepository.open(store)
    for name, data in (("tiny", tiny_model()), ("mlp", mlp_model())):
        path = Path(store) / f"{name}.onnx"
        path.write_bytes(data)
        repository.push(path, name)

        from contextlib import redirect_stdout

    from inference import app
    from modelship.core.service import InferenceService
    from modelship.core.settings import Settings
    from modelship.doors.apigw import handle_event
    from modelship.doors.local_http import LocalLambdaContext

    # The core columns use a service without the Powertools observer, so they show the core alone. It
    # shares the handler's loaded models: one session per model, so every column runs the same weights
    # (two copies of a 16 MB model would evict each other from the CPU caches and skew the comparison).
    service = InferenceService.from_settings(Settings.from_env())
    for name in ("tiny", "mlp"):
        service.lifecycle.cache.put(app.service.lifecycle.get(name, None))
    context: Any = LocalLambdaContext()
    sink = Path(os.devnull).open("w")  # noqa: SIM115 - open for the whole run
    print(
        f"{'case':<28}{'raw us':>10}{'core us':>10}{'apigw us':>10}"
        f"{'handler us':>12}{'handler-raw':>13}{'ratio':>8}"
    )
    # Powertools prints EMF metrics to stdout on every invocation, as in Lambda; keep them off the table.
    table = sys.stdout
    redirect = redirect_stdout(sink)
    redirect.__enter__()
    for name, batch, repeat in (("tiny", 1, args.repeat), ("mlp", 32, max(50, args.repeat // 30))):
        model = service.lifecycle.get(name, None)
        shape = model.manifest.inputs[0].shape
        assert shape is not None, "the benchmark's models have ranked inputs"
        width = shape[-1]
        array = np.random.default_rng(1).standard_normal((batch, width)).astype(np.float32)
        for mode in ("json", "binary"):
            event = proxy_event(name, array, binary=mode == "binary")
            body = (
                event["body"].encode() if not event["isBase64Encoded"] else pybase64.b64decode(event["body"])
            )
            headers = {k.lower(): v for k, v in event["headers"].items()}
            raw, core, translated, handler = interleaved_medians(
                [
                    lambda: model.session.run(None, {"x": array}),
                    lambda: service.handle("POST", event["path"], headers, body),
                    lambda: handle_event(service, event),
                    lambda: app.handler(event, context),
                ],
                repeat,
            )
            print(
                file=table,
                end=f"{name + ' ' + mode + ' b' + str(batch):<28}{raw:>10.1f}{core:>10.1f}{translated:>10.1f}"
                f"{handler:>12.1f}{handler - raw:>13.1f}{handler / raw:>8.2f}\n",
            )


if __name__ == "__main__":
    main()
