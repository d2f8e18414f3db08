"""INT8 against FP32, side by side: what ``modelship optimize --int8`` reports, for the digits example and
the benchmark's CNN and MLP.

Each row is one ``core.quantization.quantize_int8`` run, the same code ``optimize`` runs: both models in
one process with the same session options (one intra-op thread), p50 over interleaved runs after a
warm-up, top-1 agreement and the largest absolute error. The digits example is quantised twice: dynamic
(compared on 64 generated samples) and static (calibrated on, and compared on, 200 training images). The
CNN and the MLP have random weights and no classes worth the name, so their agreement is on generated
inputs and says only how far INT8 moves their outputs.

    python bench/int8.py [--models digits,cnn,mlp] [--repeats N] [--quick] [--out FILE.json]

prints the markdown section; ``--out`` also writes the rows and the section as JSON, which
``section_lines`` turns back into the report's lines (the hook for bench/run.py and bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# As bench/run.py does: the core from functions/, the other series by their bare names.
sys.path[:0] = [str(ROOT / "functions"), str(BENCH)]

from models import BUILDERS  # noqa: E402
from modelship.core.quantization import DEFAULT_REPEATS, Int8Report, SampleSet, quantize_int8  # noqa: E402

MODELS = ("digits", "cnn", "mlp")


@dataclass(frozen=True, slots=True)
class Int8Row:
    model: str
    report: Int8Report

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, **self.report.to_json()}


def _digits_calibration(calibration: Any) -> SampleSet:
    feeds = tuple({"image": calibration[index : index + 1]} for index in range(len(calibration)))
    return SampleSet(feeds, len(calibration), f"{len(calibration)} training images of the digits example")


def run(models: tuple[str, ...] = MODELS, repeats: int = DEFAULT_REPEATS) -> list[Int8Row]:
    rows: list[Int8Row] = []
    for model in models:
        if model == "digits":
            from modelship.tools.examples import build_digits_model

            built = build_digits_model()
            rows.append(Int8Row("digits", quantize_int8(built.data, repeats=repeats).report))
            calibration = _digits_calibration(built.calibration)
            rows.append(
                Int8Row("digits", quantize_int8(built.data, calibration=calibration, repeats=repeats).report)
            )
        else:
            rows.append(Int8Row(model, quantize_int8(BUILDERS[model](), repeats=repeats).report))
    return rows


QUICK_REPEATS = 20


def section_lines(document: dict[str, Any] | None, error: str = "not run") -> list[str]:
    """The report's section from what ``--out`` wrote (or why there is none)."""
    if not document or "markdown" not in document:
        reason = (document or {}).get("error", error)
        return ["## INT8 quantisation (`modelship optimize --int8`)", "", f"Not measured: {reason}.", ""]
    return [*str(document["markdown"]).splitlines(), ""]


def markdown(rows: list[Int8Row]) -> str:
    lines = [
        "## INT8 quantisation (`modelship optimize --int8`)",
        "",
        "Each row quantises the FP32 model with onnxruntime's tools and compares the two side by side in one "
        "process (same session options, one intra-op thread; p50 over interleaved runs after a warm-up, "
        "batch of one). Top-1 agreement and the largest absolute error are measured on the data named.",
        "",
        "| model | method | size FP32 → INT8 (bytes) | size ratio | p50 FP32 (ms) | p50 INT8 (ms) "
        "| latency ratio | top-1 agreement | largest abs. error | compared on |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        report = row.report
        lines.append(
            f"| {row.model} | {report.method} | {report.source_bytes:,} → {report.int8_bytes:,} "
            f"| {report.int8_bytes / report.source_bytes:.2f}x | {report.source_p50 * 1000:.4f} "
            f"| {report.int8_p50 * 1000:.4f} | {report.int8_p50 / report.source_p50:.2f}x "
            f"| {report.agreement.top1:.4f} | {report.agreement.max_abs_error:.3g} "
            f"| {report.agreement.compared_on} |"
        )
    tool = rows[0].report.tool if rows else "onnxruntime"
    lines += [
        "",
        f"Quantised with {tool}; {rows[0].report.repeats if rows else 0} timed runs of each model per row.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: digits, cnn, mlp")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed runs of each model")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} timed runs of each model")
    parser.add_argument("--out", type=Path, help="also write the rows and the section here, as JSON")
    args = parser.parse_args()
    models = tuple(name for name in args.models.split(",") if name)
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models: {', '.join(unknown)}")
    rows = run(models, QUICK_REPEATS if args.quick else args.repeats)
    section = markdown(rows)
    if args.out is not None:
        document = {"rows": [row.to_json() for row in rows], "markdown": section}
        args.out.write_text(json.dumps(document, indent=1))
    print(section, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
