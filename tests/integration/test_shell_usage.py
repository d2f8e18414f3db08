"""What `make deploy-local` prints, and its printed commands typed into a plain shell.

The shell is a real ``bash -c`` that starts without any AWS or modelship variable, as a new user's does:
``source .localstack/env.sh`` (the line deploy-local prints) is what points it at LocalStack. The commands
run are the ones deploy-local printed, so the summary cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.support import ROOT, STATE_DIR, Deployment

pytestmark = [pytest.mark.localstack, pytest.mark.slow, pytest.mark.timeout(600)]

# One line per step, then the summary: the CloudFormation events and the tools' banners go to the log.
MAX_OUTPUT_LINES = 30
COMMAND_TIMEOUT_SECONDS = 120


def shown(deploy_local: subprocess.CompletedProcess[str]) -> str:
    return deploy_local.stderr + deploy_local.stdout


def printed_command(deploy_local: subprocess.CompletedProcess[str], start: str, containing: str = "") -> str:
    """The one command line in deploy-local's summary that starts with ``start`` and has ``containing``."""
    found = [
        line.strip()
        for line in deploy_local.stdout.splitlines()
        if (line.strip() == start or line.strip().startswith(start + " ")) and containing in line
    ]
    assert len(found) == 1, f"expected one command {start!r} ... {containing!r}:\n{deploy_local.stdout}"
    return found[0]


@pytest.fixture
def plain_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell before `source`: no AWS or modelship settings, no ~/.aws, no instance metadata."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MODELSHIP_"))}
    env["HOME"] = str(tmp_path)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def shell(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )


def sourced(deploy_local: subprocess.CompletedProcess[str], command: str, env: dict[str, str]) -> str:
    """``command`` after the printed ``source`` line, in one bash; its stdout, asserting it succeeded."""
    completed = shell(f"set -e\n{printed_command(deploy_local, 'source')}\n{command}", env)
    assert completed.returncode == 0, f"{command}\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    return completed.stdout


def test_deploy_local_prints_steps_and_a_summary_not_the_tools_output(
    deploy_local: subprocess.CompletedProcess[str], deployment: Deployment
) -> None:
    output = shown(deploy_local)
    assert len(output.splitlines()) <= MAX_OUTPUT_LINES, output
    for noise in ("b'", "Unknown option", "CREATE_COMPLETE", "NodeVersionSupportWarning", "!!!"):
        assert noise not in output, f"{noise!r} in deploy-local's output:\n{output}"
    # CDK's EndpointUrl (an execute-api host name that does not resolve) is not shown: the first URL is
    # the DNS-free invoke URL.
    assert "execute-api" not in output
    urls = re.findall(r"http://\S+", deploy_local.stdout)
    assert urls, deploy_local.stdout
    assert urls[0] == deployment.base_url
    assert re.search(r"^deploy-local: cdklocal deploy .* \d+\.\ds$", deploy_local.stderr, re.MULTILINE)
    # The whole output is kept, and the summary says where.
    log = STATE_DIR / "deploy-local.log"
    assert f"Full log: {log.relative_to(ROOT)}" in deploy_local.stdout
    assert "CREATE_COMPLETE" in log.read_text()


def test_env_file_holds_what_a_shell_needs(deploy_local: subprocess.CompletedProcess[str]) -> None:
    assert printed_command(deploy_local, "source") == "source .localstack/env.sh"
    text = (STATE_DIR / "env.sh").read_text()
    for line in (
        "export AWS_ENDPOINT_URL=http://127.0.0.1:",
        "export AWS_ENDPOINT_URL_S3=http://127.0.0.1:",
        "export AWS_ACCESS_KEY_ID=test",
        "export AWS_SECRET_ACCESS_KEY=test",
        "export AWS_DEFAULT_REGION=",
        "export MODELSHIP_STORE=s3://",
        "export MODELSHIP_URL=http://127.0.0.1:",
    ):
        assert line in text, f"{line!r} missing from env.sh:\n{text}"


def test_without_the_env_file_the_cli_cannot_reach_the_store(
    deployment: Deployment, plain_env: dict[str, str]
) -> None:
    """The failure a user met before: what makes the next test pass is the env file, not the test's env."""
    completed = shell(f".venv/bin/modelship list --store {deployment.store}", plain_env)
    assert completed.returncode != 0
    assert "credentials" in (completed.stdout + completed.stderr).lower()


def test_printed_cli_commands_work_after_sourcing_the_env_file(
    deploy_local: subprocess.CompletedProcess[str], plain_env: dict[str, str]
) -> None:
    listed = sourced(deploy_local, printed_command(deploy_local, ".venv/bin/modelship list"), plain_env)
    assert re.search(r"^iris\s", listed, re.MULTILINE), listed

    pushed = sourced(deploy_local, printed_command(deploy_local, ".venv/bin/modelship push"), plain_env)
    manifest = json.loads(pushed)
    assert manifest["name"] == "my-iris"
    listed = sourced(deploy_local, ".venv/bin/modelship list", plain_env)
    assert re.search(r"^my-iris\s", listed, re.MULTILINE), listed

    inferred = sourced(deploy_local, printed_command(deploy_local, ".venv/bin/modelship infer"), plain_env)
    answer = json.loads(inferred)
    assert answer["model_name"] == "iris"
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [1, 3]
    assert outputs["label"]["shape"] == [1]


def test_printed_curl_without_content_type_is_answered_like_json(
    deploy_local: subprocess.CompletedProcess[str], plain_env: dict[str, str]
) -> None:
    """curl -d without a Content-Type sends application/x-www-form-urlencoded; AWS passes the body through
    unchanged, and so must LocalStack (scripts/localstack_main.py), for the README's curl to work."""
    curl = printed_command(deploy_local, "curl -s -X POST")
    assert "Content-Type" not in curl
    form = shell(curl + " -w '\\n%{http_code}'", plain_env)
    as_json = shell(curl + " -H 'Content-Type: application/json' -w '\\n%{http_code}'", plain_env)
    assert form.returncode == 0, form.stderr
    form_body, form_status = form.stdout.rsplit("\n", 1)
    json_body, json_status = as_json.stdout.rsplit("\n", 1)
    assert (form_status, json_status) == ("200", "200"), (form.stdout, as_json.stdout)
    assert json.loads(form_body) == json.loads(json_body)
    assert json.loads(form_body)["model_name"] == "iris"

    health_curl = printed_command(deploy_local, "curl -s", "/v2/health/live")
    health = shell(health_curl + " -w '\\n%{http_code}'", plain_env)
    assert health.stdout.rsplit("\n", 1)[1] == "200", health.stdout


def test_form_encoded_body_reaches_the_function_byte_for_byte(
    deployment: Deployment, plain_env: dict[str, str]
) -> None:
    """A body that form-decoding would change ('+' becomes a space): a JSON number with an exponent. So
    undoing LocalStack's re-encoding downstream (in the function) could not pass this; passing the raw
    body through does."""
    body = '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1e+0,3.5,1.4,0.2]}]}'
    url = f"{deployment.base_url}/v2/models/iris/infer"
    completed = shell(f"curl -s -X POST {url} -d '{body}'", plain_env)
    assert json.loads(completed.stdout)["model_name"] == "iris", completed.stdout
