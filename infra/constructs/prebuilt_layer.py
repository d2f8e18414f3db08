"""A Lambda layer from a zip built beforehand by ``layers/build_layer.py`` (no Docker bundling)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra.config import ConfigError
from layers.elf import HEADER_BYTES, architecture_name, elf_machine

LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_13


def lambda_architecture(name: str) -> lambda_.Architecture:
    """The CDK architecture for the names used in context and by the layer builder."""
    return {"arm64": lambda_.Architecture.ARM_64, "x86_64": lambda_.Architecture.X86_64}[name]


def elf_architectures(zip_path: Path) -> set[str]:
    """The architectures of the shared objects inside a layer zip (empty for pure-Python layers)."""
    found: set[str] = set()
    with zipfile.ZipFile(zip_path) as archive:
        for entry in archive.infolist():
            if ".so" not in entry.filename.rsplit("/", 1)[-1]:
                continue
            with archive.open(entry) as handle:
                machine = elf_machine(handle.read(HEADER_BYTES))
            if machine is not None:
                found.add(architecture_name(machine))
    return found


class PrebuiltLayer(Construct):
    """One layer version whose content is an existing zip whose top folder is ``python/``.

    The zip's sha256 goes into the description, so the deployed layer can be traced back to the exact
    build recorded in ``layers/build/<arch>/layers.json``.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, zip_path: Path, architecture: str, purpose: str
    ) -> None:
        super().__init__(scope, construct_id)
        if not zip_path.is_file():
            raise FileNotFoundError(f"layer zip {zip_path} does not exist; build it with `make layer`")
        # A layer built for the other architecture deploys fine and fails every cold start: refuse it here.
        foreign = elf_architectures(zip_path) - {architecture}
        if foreign:
            raise ConfigError(
                f"layer zip {zip_path} holds {sorted(foreign)} code, but the function is {architecture}; "
                f"build it with `make layer ARCH={architecture}`"
            )
        self.sha256 = hashlib.sha256(zip_path.read_bytes()).hexdigest()
        self.layer_version = lambda_.LayerVersion(
            self,
            "Layer",
            # A .zip file asset is uploaded as is, not re-archived: the deployed bytes are the built bytes.
            code=lambda_.Code.from_asset(str(zip_path)),
            compatible_runtimes=[LAMBDA_RUNTIME],
            compatible_architectures=[lambda_architecture(architecture)],
            description=(
                f"modelship {purpose} ({architecture}, {LAMBDA_RUNTIME.name}) sha256:{self.sha256[:16]}"
            ),
        )
