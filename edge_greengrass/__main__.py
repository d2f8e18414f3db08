"""``python -m edge_greengrass``: the edge door (see ``edge_greengrass.door``)."""

from __future__ import annotations

import logging
import os
import sys

from edge_greengrass.door import main

if __name__ == "__main__":
    status = main()
    # A thread still inside onnxruntime (a cancelled run, a model still loading) or the IPC SDK's own
    # threads could stall or abort the interpreter's finalisation past the nucleus's 5 s: end here, with
    # the logs flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
