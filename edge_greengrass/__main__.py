"""``python -m edge_greengrass``: the edge door (see ``edge_greengrass.door``)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType


def _stopped_while_importing(signum: int, frame: FrameType | None) -> None:
    # Importing onnxruntime and numpy takes seconds on a small device: a SIGTERM then is a clean stop,
    # not a death by the signal. main() installs the real handlers once it is imported.
    os._exit(0)


if __name__ == "__main__":
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stopped_while_importing)
    from edge_greengrass.door import main

    status = main()
    # A thread still inside onnxruntime (a cancelled run, a model still loading) or the IPC SDK's own
    # threads could stall or abort the interpreter's finalisation past the nucleus's 5 s: end here, with
    # the logs flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
