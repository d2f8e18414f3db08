"""cdk-nag: zero unacknowledged findings, no stale acknowledgments, and proof the packs really run.

cdk-nag 3.x is a policy-validation plugin: its findings are not Annotations (so ``Annotations.find_error``
would see nothing); they fail ``app.synth()``. These tests call each pack's ``validate_scope`` to get
the findings as data, and check CDK's own annotations separately.
"""

from __future__ import annotations

import pytest
from aws_cdk import App, Stack, Validations
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Annotations, Match
from cdk_nag import AwsSolutionsChecks, NagPack, ServerlessChecks

import infra.constructs.inference_api
import infra.constructs.inference_function
import infra.constructs.model_bucket
import infra.constructs.release
from infra.nag import acknowledge
from tests.infra.conftest import ALTERNATE_CONTEXT, OPERATIONS_CONTEXT, SynthFactory

pytestmark = pytest.mark.infra

# Modules that acknowledge findings; patched out to see the raw findings.
ACKNOWLEDGING_MODULES = (
    infra.constructs.inference_api,
    infra.constructs.inference_function,
    infra.constructs.model_bucket,
    infra.constructs.release,
)


def packs() -> list[NagPack]:
    # No scope: the packs are only evaluated here, not registered with (or adding aspects to) an app.
    return [AwsSolutionsChecks(verbose=True), ServerlessChecks(verbose=True)]


def findings(app: App) -> dict[str, set[str]]:
    """Unacknowledged findings: rule id -> construct paths."""
    found: dict[str, set[str]] = {}
    for pack in packs():
        report = pack.validate_scope(app)
        for violation in report.violations:
            paths = {resource.construct_path for resource in violation.violating_resources}
            found.setdefault(violation.rule_name, set()).update(str(path) for path in paths)
    return found


def acknowledgments(app: App) -> dict[str, list[tuple[str, str]]]:
    """Acknowledged nag rule ids -> [(construct path, reason)], read back from construct metadata."""
    acknowledged: dict[str, list[tuple[str, str]]] = {}
    for construct in app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type != Validations.ACKNOWLEDGED_RULES_METADATA_KEY or not isinstance(entry.data, dict):
                continue
            for qualified_id, reason in entry.data.items():
                rule_id = str(qualified_id).split("::", 1)[-1]
                if rule_id.startswith(("AwsSolutions-", "Serverless-")):
                    acknowledged.setdefault(rule_id, []).append((construct.node.path, str(reason)))
    return acknowledged


VARIANTS = {"default": {}, "alternate": ALTERNATE_CONTEXT, "operations": OPERATIONS_CONTEXT}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_unacknowledged_findings(make_app: SynthFactory, variant: str) -> None:
    app = make_app(**VARIANTS[variant])
    assert findings(app) == {}
    app.synth()  # the registered packs pass too, or synthesis would raise


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cdk_itself_reports_no_warnings_or_errors(make_app: SynthFactory, variant: str) -> None:
    app = make_app(**VARIANTS[variant])
    for child in app.node.children:
        if isinstance(child, Stack):
            annotations = Annotations.from_stack(child)
            assert annotations.find_error("*", Match.any_value()) == []
            assert annotations.find_warning("*", Match.any_value()) == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_acknowledgment_silences_a_real_finding(
    make_app: SynthFactory, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """An acknowledgment whose finding no longer exists must be deleted, not left to hide a future one."""
    acknowledged = acknowledgments(make_app(**VARIANTS[variant]))
    assert acknowledged, "expected the documented acknowledgments"
    for module in ACKNOWLEDGING_MODULES:
        if hasattr(module, "acknowledge"):
            monkeypatch.setattr(module, "acknowledge", lambda *args, **kwargs: None)
    raw = findings(make_app(**VARIANTS[variant]))
    for rule_id, places in acknowledged.items():
        assert rule_id in raw, f"{rule_id} is acknowledged but nothing triggers it"
        for path, reason in places:
            assert any(found == path or found.startswith(path + "/") for found in raw[rule_id]), (
                rule_id,
                path,
            )
            assert len(reason) >= 40
    assert set(raw) == set(acknowledged), "every raw finding is acknowledged with a reason"


def test_the_packs_catch_an_insecure_resource(make_app: SynthFactory) -> None:
    """A test that could never fail proves nothing: add a bare bucket and watch both layers object."""
    app = make_app()
    store = app.node.find_child("modelship-prod-store")
    assert isinstance(store, Stack)
    s3.Bucket(store, "Careless")
    found = findings(app)
    assert any(path.endswith("/Careless/Resource") for path in found.get("AwsSolutions-S10", set()))
    assert any(path.endswith("/Careless/Resource") for path in found.get("AwsSolutions-S1", set()))
    with pytest.raises(RuntimeError, match="AwsSolutions-S10"):
        app.synth()


def test_acknowledge_demands_a_specific_reason() -> None:
    app = App()
    with pytest.raises(ValueError, match="specific reason"):
        acknowledge(app, "AwsSolutions-S1", "not needed")


def test_granular_acknowledgment_names_each_finding() -> None:
    app = App()
    stack = Stack(app, "S")
    acknowledge(
        stack,
        "AwsSolutions-IAM5",
        "a reason long enough to say why this finding does not apply here",
        applies_to=["Resource::*", "Action::s3:Get*"],
    )
    acknowledged = acknowledgments(app)
    assert set(acknowledged) == {"AwsSolutions-IAM5[Resource::*]", "AwsSolutions-IAM5[Action::s3:Get*]"}
