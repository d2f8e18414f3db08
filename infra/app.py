"""The CDK app: ``cdk synth`` runs ``python -m infra.app`` (see cdk.json).

Stacks are environment-agnostic (no account or region baked in), so synthesis needs no AWS
credentials; the account and region come from the AWS profile at ``cdk deploy`` time.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from aws_cdk import App, Tags

from infra.config import EDGE_PACKAGE_COMMAND, ConfigError, DeployConfig
from infra.nag import apply_nag_packs
from infra.stacks.inference_api_stack import InferenceApiStack, LayerZips
from infra.stacks.model_store_stack import ModelStoreStack


def resolve_layer_zips(config: DeployConfig) -> LayerZips:
    """The layer zips from context, or the cached build for the configured architecture (built if missing)."""
    if config.onnx_layer_zip is not None and config.deps_layer_zip is not None:
        return LayerZips(onnx=config.onnx_layer_zip, deps=config.deps_layer_zip)
    from layers.build_layer import build_layers  # the builder is only needed when no zip is given

    artifacts = build_layers(config.architecture)
    return LayerZips(onnx=artifacts["onnx"].zip_path, deps=artifacts["deps"].zip_path)


def add_edge_stack(app: App, config: DeployConfig, store: ModelStoreStack) -> None:
    """The edge stack, when there is an edge package; otherwise one line on stderr says how to make one."""
    if config.edge_package is None:
        return  # edge_package=off: left out on purpose
    if not config.has_edge_package:
        print(
            f"modelship: no edge package at {config.edge_package}, so the edge stack is skipped; "
            f"make one with `{EDGE_PACKAGE_COMMAND}`",
            file=sys.stderr,
        )
        return
    # Imported only with a package: reading one needs the edge-package extra (PyYAML, jsonschema).
    from infra.stacks.edge_stack import EdgeStack, read_edge_package

    edge = EdgeStack(
        app, config.stack_name("edge"), config=config, package=read_edge_package(config.edge_package)
    )
    edge.add_stack_dependency(store, "the components' artifacts live in the model-store bucket")


def build_app(context: Mapping[str, object] | None = None, *, outdir: str | None = None) -> App:
    """Build the whole app. Tests pass ``context``; the CDK CLI passes it through the environment."""
    app = App(context=dict(context) if context is not None else None, outdir=outdir)
    config = DeployConfig.from_context(app.node.get_all_context())
    layer_zips = resolve_layer_zips(config)

    store = ModelStoreStack(app, config.stack_name("store"), config=config)
    api = InferenceApiStack(app, config.stack_name("api"), config=config, layer_zips=layer_zips)
    api.add_stack_dependency(store, "the function reads models from the model-store bucket")
    add_edge_stack(app, config, store)

    Tags.of(app).add("project", "modelship")
    Tags.of(app).add("stage", config.stage)
    apply_nag_packs(app)
    return app


def main() -> int:
    try:
        app = build_app()
    except ConfigError as error:
        print(f"modelship: {error}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
