"""Run the Lambda handler module (functions/inference/app.py) on API Gateway events, in a process of its
own: ``python lambda_invoke.py EVENTS.json RESULTS.json`` with ``MODELSHIP_STORE`` set. The results go to
a file, since Powertools writes its logs and metrics to stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(events_path: str, results_path: str) -> None:
    import inference.app
    from modelship.doors.local_http import LocalLambdaContext

    events = json.loads(Path(events_path).read_text())
    # The local stand-in has every attribute the handler reads from Lambda's context.
    context: Any = LocalLambdaContext()
    results = [inference.app.handler(event, context) for event in events]
    Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
