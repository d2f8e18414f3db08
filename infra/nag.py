"""cdk-nag wiring: the rule packs we apply and the one way we acknowledge a finding.

cdk-nag 3.x runs as a CDK policy-validation plugin (``Validations.of(app).add_plugins(...)``), not as an
Aspect: findings are no longer Annotations, they fail ``app.synth()`` and land in the validation report.
A finding is acknowledged with ``Validations.of(construct).acknowledge(...)``; a granular finding (what
v2 called ``appliesTo``) is acknowledged by its full id, ``Rule[Finding]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aws_cdk import Acknowledgment, App, Stack, Validations
from cdk_nag import AwsSolutionsChecks, NagPack, ServerlessChecks
from constructs import IConstruct

# A reason must say why the finding does not apply here, not merely that it was looked at.
MIN_REASON_LENGTH = 40


def nag_packs(app: App) -> list[NagPack]:
    """The packs modelship is held to. ``verbose`` puts each rule's explanation in the report."""
    return [
        AwsSolutionsChecks(app, verbose=True, write_suppressions_to_cloud_formation=True),
        ServerlessChecks(app, verbose=True),
    ]


def apply_nag_packs(app: App) -> list[NagPack]:
    """Register the packs: any unacknowledged finding, error or warning, then fails synthesis."""
    packs = nag_packs(app)
    Validations.of(app).add_plugins(*packs)
    return packs


def acknowledge(scope: IConstruct, rule: str, reason: str, *, applies_to: Sequence[str] = ()) -> None:
    """Acknowledge ``rule`` on ``scope`` (and its children) with a specific reason.

    ``applies_to`` narrows a granular rule to the listed findings (e.g. ``Resource::*``), so any new
    finding of the same rule on the same construct still fails the build.
    """
    if len(reason.strip()) < MIN_REASON_LENGTH:
        raise ValueError(f"acknowledging {rule} needs a specific reason (at least {MIN_REASON_LENGTH} chars)")
    ids = [f"{rule}[{finding}]" for finding in applies_to] if applies_to else [rule]
    Validations.of(scope).acknowledge(*(Acknowledgment(id=rule_id, reason=reason) for rule_id in ids))


def nag_resource_id(scope: IConstruct, value: str) -> str:
    """How cdk-nag spells a (possibly tokenised) IAM resource in a granular finding id.

    A port of cdk-nag's ``flattenCfnReference``: ``Ref`` becomes ``<Name>``, ``Fn::Join`` is joined,
    ``Fn::GetAtt`` becomes ``<Resource.Attribute>``. Acknowledging with the exact id keeps the
    acknowledgment narrow: any other wildcard resource on the same policy still fails synthesis.
    """
    return _flatten(Stack.of(scope).resolve(value))


def _flatten(node: Any) -> str:
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict):
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return str(delimiter).join(_flatten(item) for item in items)
        if "Fn::Sub" in node:
            return _flatten(node["Fn::Sub"])
        if "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"]
            return f"<{_flatten(resource)}.{_flatten(attribute)}>"
        if "Fn::ImportValue" in node:
            return _flatten(node["Fn::ImportValue"])
        if "Ref" in node:
            return f"<{_flatten(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"))
