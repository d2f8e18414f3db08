"""What modelship calls itself: in the server metadata, the logs' service name and the metric namespace.

One constant each, shared by the core, the Lambda door and the CDK app (which sets the Powertools
variables and the alarms' namespace from them).
"""

from __future__ import annotations

from typing import Final

SERVER_NAME: Final = "modelship"
SERVICE_NAME: Final = SERVER_NAME
METRICS_NAMESPACE: Final = "Modelship"
