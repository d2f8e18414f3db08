"""The isolated first load: a model that would not fit or not finish is refused without the server
ever holding it, and what a good one costs is measured alone."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from modelship.core import isolation
from modelship.core.errors import ModelUnavailable
from modelship.core.isolation import ProbeReport, probe_model
from modelship.core.memory import resident_bytes
from modelship.core.repository import ModelRepository
from modelship.core.service import InferenceService
from modelship.core.settings import Settings

from tests.support import hostile_models
from tests.support.models import identity_model, write_model
from tests.support.processes import REPO_ROOT

MIB = 1024 * 1024
# The real check, before the fixture below replaces it for each test.
REAL_FORK_IS_SAFE = isolation.fork_is_safe


@pytest.fixture(autouse=True, params=["fork", "spawn"])
def child_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every guarantee holds for both children: forked from this process, or a new interpreter."""
    monkeypatch.setattr(isolation, "fork_is_safe", lambda: request.param == "fork")
    yield request.param


def probe(data: bytes, *, limit: int = 256 * MIB, timeout: float = 60, run_timeout: float = 5) -> ProbeReport:
    return probe_model(
        data,
        where="m version 1",
        memory_limit_bytes=limit,
        timeout_seconds=timeout,
        run_timeout=run_timeout,
        threads=1,
    )


def test_a_small_model_is_measured_small_and_a_folded_one_large() -> None:
    small = probe(identity_model("FP32"))
    folded = probe(hostile_models.memory_bomb(mebibytes=96))
    assert small.session_bytes < 32 * MIB
    assert folded.session_bytes >= 96 * MIB


@pytest.mark.parametrize("mebibytes", [1024, 4096], ids=["folds-1GiB", "folds-4GiB"])
def test_a_model_that_needs_more_than_the_limit_is_refused(mebibytes: int) -> None:
    with pytest.raises(ModelUnavailable, match="needs more than"):
        probe(hostile_models.memory_bomb(mebibytes=mebibytes), limit=64 * MIB)


def test_a_warm_up_that_never_ends_is_refused() -> None:
    with pytest.raises(ModelUnavailable, match="deadline"):
        probe(hostile_models.counting_loop(2**62), run_timeout=0.5)


def test_a_load_past_its_timeout_is_refused() -> None:
    with pytest.raises(ModelUnavailable, match="did not finish loading within"):
        probe(identity_model("FP32"), timeout=0.001)


def test_external_data_is_refused_in_the_child_too() -> None:
    with pytest.raises(ModelUnavailable, match="external data"):
        probe(hostile_models.external_initializer())


def test_the_server_never_holds_a_refused_bomb(tmp_path: Path) -> None:
    repository = ModelRepository.open(str(tmp_path / "store"))
    repository.push(write_model(tmp_path, "bomb", hostile_models.memory_bomb(mebibytes=1024)), "bomb")
    service = InferenceService(repository, Settings(store_uri=repository.uri, session_memory_bytes=128 * MIB))
    before = resident_bytes()
    response = service.handle("GET", "/v2/models/bomb", {}, b"")
    after = resident_bytes()
    assert response.status == 503
    assert "MiB" in orjson.loads(response.body)["error"]
    assert before is not None and after is not None
    assert after - before < 64 * MIB, "the gigabyte was only ever in the child"


def test_a_warm_up_stuck_inside_one_kernel_is_stopped_by_the_load_timeout() -> None:
    """A run's deadline is checked between kernels; a load's timeout kills the whole child."""
    with pytest.raises(ModelUnavailable, match="did not finish loading within 2 s"):
        probe(hostile_models.slow_to_fold(400_000), timeout=2, run_timeout=0.5)


PARENT = """
import sys
sys.path[:0] = sys.argv[1:3]
from modelship.core import isolation
from modelship.core.isolation import probe_model
isolation.fork_is_safe = lambda: sys.argv[3] == "fork"
from tests.support import hostile_models
probe_model(hostile_models.slow_to_fold(400_000), where="m version 1", memory_limit_bytes=256 << 20,
            timeout_seconds=600, run_timeout=600, threads=1)
"""


def test_an_isolated_load_dies_with_the_process_that_started_it(child_kind: str) -> None:
    """A server killed mid-load must not leave its child folding a hostile graph under init."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(REPO_ROOT / "functions"), str(REPO_ROOT), child_kind],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        child = wait_for_child(parent.pid, within=30)
        assert child is not None, "the isolated load did not start"
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while is_running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not is_running(child), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def wait_for_child(parent_pid: int, within: float) -> int | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            if f"\nPPid:\t{parent_pid}\n" in text:
                return int(status.parent.name)
        time.sleep(0.1)
    return None


def is_running(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_blocked_forked_child_is_retried_in_a_new_interpreter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A forked child that times out without using the CPU was blocked by the fork, not by the model."""
    monkeypatch.setattr(isolation, "fork_is_safe", lambda: True)

    def blocked(*args: object) -> None:
        raise isolation._ForkedChildStuck(0.0)

    monkeypatch.setattr(isolation, "_run_forked", blocked)
    assert probe(identity_model("FP32")).session_bytes < 32 * MIB
    assert "blocked" in caplog.text


def test_a_forked_child_that_sleeps_past_the_timeout_is_called_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(isolation, "_child", lambda *args: time.sleep(60))
    with pytest.raises(isolation._ForkedChildStuck):
        isolation._run_forked(identity_model("FP32"), 256 * MIB, 5, 1, timeout_seconds=1)


def test_forking_is_refused_while_another_thread_runs() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not REAL_FORK_IS_SAFE()
    finally:
        stop.set()
        other.join()


def test_forking_is_refused_once_a_session_has_threads_of_its_own() -> None:
    """A session's intra-op pool is not one of the libraries' idle threads: the load spawns then."""
    if isolation._LIBRARY_THREADS is None:
        pytest.skip("this process imported onnxruntime with other threads running: it never forks")
    from modelship.core.sessions import create_session

    session = create_session(identity_model("FP32"), threads=2)
    assert not REAL_FORK_IS_SAFE()
    del session
