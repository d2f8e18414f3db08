"""The edge stack: a placeholder that the Greengrass issue fills in.

It deliberately creates nothing yet. The cloud-side resources of the edge door (``edge_greengrass/``)
belong here, next to but independent of the inference API. Until they exist the stack is not added to
the app (``infra/app.py``): CloudFormation rejects a template without resources, and CDK's own template
validation fails synthesis on one, so an empty stack cannot be part of ``cdk deploy --all``.
When it gains resources, add it in ``build_app``:
``EdgeStack(app, config.stack_name("edge"), config=config)``.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from constructs import Construct

from infra.config import DeployConfig


class EdgeStack(Stack):
    """Cloud-side resources of the Greengrass door. Empty for now (see the module docstring)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: DeployConfig, **kwargs: Any) -> None:
        super().__init__(
            scope,
            construct_id,
            description=f"modelship {config.stage}: edge (AWS IoT Greengrass) resources",
            **kwargs,
        )
