"""KServe 0.21's Python model server with a small ``kserve.Model`` that runs onnxruntime.

Run in the KServe virtualenv (``build/bench/venvs/kserve``), pinned to a CPU by the caller:

    python bench/peers/kserve_server.py --port P --model tiny=/path/tiny.onnx --model cnn=/path/cnn.onnx

One intra-op thread, as in every server of the comparison. KServe binds 0.0.0.0 (hard-coded in its
``ModelServer``); the benchmark only ever calls it on 127.0.0.1. JSON requests need
``Content-Type: application/json``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.utils.utils import generate_uuid

DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
}


class OnnxModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.session: Any = None
        self.output_names: list[str] = []

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: Any = None, response_headers: Any = None
    ) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(self.output_names, feeds)
        outputs = []
        for name, array in zip(self.output_names, results, strict=True):
            output = InferOutput(name=name, shape=list(array.shape), datatype=DATATYPES[array.dtype])
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        # A None id answers 500.
        return InferResponse(
            response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=outputs
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=MODEL.onnx")
    args = parser.parse_args()
    models = []
    for spec in args.model:
        name, _, path = spec.partition("=")
        model = OnnxModel(name, path)
        model.load()
        models.append(model)
    ModelServer(http_port=args.port, workers=1, enable_grpc=False).start(models)


if __name__ == "__main__":
    main()
