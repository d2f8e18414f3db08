"""Series 10: the estimated Lambda cost per million inferences, from the handler durations measured here.

    cost per million = 1,000,000 x (ceil(duration ms) / 1000 x memory MB / 1024 x price per GB-s)
                       + price per million requests

Prices (us-east-1): x86_64 $0.0000166667 per GB-s, arm64 $0.0000133334 per GB-s, and $0.20 per million
requests on both; Lambda bills duration rounded up to the millisecond. One request carries one batch-1
inference. The duration is the full handler's p50 in-process (series 3, the run pinned to one CPU when
there is one), measured on this machine's CPU: it stands in for Lambda's, which differs by CPU model and
by architecture (an arm64 function runs on Graviton), and gives less than one vCPU below 1,769 MB. The
free tier, API Gateway, data transfer and CloudWatch are left out.

    python bench/cost.py [--inprocess build/bench/inprocess.json] [--out build/bench/cost.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

PRICE_PER_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
PRICE_PER_MILLION_REQUESTS = 0.20
MEMORY_SIZES_MB = (1024, 2048)
FORMULA = (
    "cost per million = 1,000,000 x ceil(duration ms) / 1000 x memory MB / 1024 x price per GB-s "
    "+ $0.20 per million requests"
)
# The case each model is costed on: batch 1, binary extension (tiny also in JSON).
COST_CASES = (("tiny", "json", 1), ("tiny", "binary", 1), ("cnn", "binary", 1), ("mlp", "binary", 1))


def cost_per_million(duration_ms: float, memory_mb: int, arch: str) -> float:
    billed_seconds = math.ceil(duration_ms) / 1000.0
    compute = billed_seconds * memory_mb / 1024.0 * PRICE_PER_GB_SECOND[arch]
    return 1_000_000 * compute + PRICE_PER_MILLION_REQUESTS


def estimate(inprocess: dict[str, Any]) -> dict[str, Any]:
    runs = inprocess.get("runs", {})
    run_name = "pinned" if "pinned" in runs else "unpinned"
    cases = runs[run_name]["cases"]
    rows = []
    for model, mode, batch in COST_CASES:
        case = next(
            (c for c in cases if (c["model"], c["mode"], c["batch"]) == (model, mode, batch)),
            None,
        )
        if case is None:
            continue
        duration_ms = case["handler"]["p50_us"] / 1000.0
        row: dict[str, Any] = {
            "model": model,
            "mode": mode,
            "batch": batch,
            "duration_ms": duration_ms,
            "billed_ms": math.ceil(duration_ms),
            "usd_per_million": {},
        }
        for arch in PRICE_PER_GB_SECOND:
            for memory_mb in MEMORY_SIZES_MB:
                row["usd_per_million"][f"{arch} {memory_mb} MB"] = cost_per_million(
                    duration_ms, memory_mb, arch
                )
        rows.append(row)
    return {
        "formula": FORMULA,
        "price_per_gb_second": PRICE_PER_GB_SECOND,
        "price_per_million_requests": PRICE_PER_MILLION_REQUESTS,
        "memory_sizes_mb": list(MEMORY_SIZES_MB),
        "durations_from": f"full handler p50, in-process, {run_name} run",
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inprocess", type=Path, default=ROOT / "build" / "bench" / "inprocess.json")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "cost.json")
    args = parser.parse_args()
    document = estimate(json.loads(args.inprocess.read_text()))
    args.out.write_text(json.dumps(document, indent=1))
    for row in document["rows"]:
        costs = ", ".join(f"{key} ${value:.2f}" for key, value in row["usd_per_million"].items())
        print(f"{row['model']} {row['mode']}: {row['duration_ms']:.3f} ms -> {costs}")


if __name__ == "__main__":
    main()
