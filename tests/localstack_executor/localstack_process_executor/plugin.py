"""The plux plugin LocalStack discovers in the ``localstack.lambda.runtime_executor`` namespace."""

from __future__ import annotations

from typing import Any

from localstack.services.lambda_.invocation.plugins import RuntimeExecutorPlugin

PLUGIN_NAME = "process"


class ProcessRuntimeExecutorPlugin(RuntimeExecutorPlugin):  # type: ignore[misc]
    """Selected by ``LAMBDA_RUNTIME_EXECUTOR=process``; must match the entry point's name."""

    name = PLUGIN_NAME

    def load(self, *args: Any, **kwargs: Any) -> Any:
        # Imported lazily, as LocalStack's own docker plugin does: plugin discovery must stay cheap
        # and must not fail when the executor is not the one selected.
        from localstack_process_executor.executor import ProcessRuntimeExecutor

        return ProcessRuntimeExecutor
