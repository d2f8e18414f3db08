"""Cold start: a new Python process to the first answer of the Lambda handler, on the bundled model.

Spawns ``--runs`` fresh interpreters that import ``inference.app`` (init, including preloading iris
from a local store) and answer one API Gateway event, and reports the median of each phase. Run it
with the Lambda runtime's Python for figures closest to Lambda.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import time, json
started = time.perf_counter()
from inference import app
imported = time.perf_counter()
class Context:  # what Lambda passes; kept inline so no extra import lands in the measurement
    function_name, memory_limit_in_mb, aws_request_id = "bench", 2048, "cold"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:bench"
event = {"httpMethod": "POST", "path": "/v2/models/iris/infer", "headers": {}, "isBase64Encoded": False,
         "requestContext": {"requestId": "cold"},
         "body": json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                          "data": [5.1, 3.5, 1.4, 0.2]}]})}
result = app.handler(event, Context())
answered = time.perf_counter()
assert result["statusCode"] == 200, result
print("TIMES", imported - started, answered - imported)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "functions"))
    from modelship.core.default_model import ensure_default_model
    from modelship.core.repository import ModelRepository

    store = tempfile.mkdtemp(prefix="modelship-cold-")
    ensure_default_model(ModelRepository.open(store), Path(store) / "scratch")
    env = {
        **os.environ,
        "MODELSHIP_STORE": store,
        "MODELSHIP_PRELOAD": "iris",
        "PYTHONPATH": str(ROOT / "functions"),
        "POWERTOOLS_METRICS_NAMESPACE": "Bench",
        "POWERTOOLS_SERVICE_NAME": "bench",
    }
    totals, imports, first = [], [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        output = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
        )
        totals.append(time.perf_counter() - started)
        line = next(line for line in output.stdout.splitlines() if line.startswith("TIMES"))
        init, answer = (float(value) for value in line.split()[1:])
        imports.append(init)
        first.append(answer)
    print(f"python {sys.version.split()[0]}, {args.runs} runs, medians:")
    print(f"  init (imports + preload iris): {statistics.median(imports) * 1000:7.1f} ms")
    print(f"  first request:                 {statistics.median(first) * 1000:7.1f} ms")
    print(f"  new process to first answer:   {statistics.median(totals) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
