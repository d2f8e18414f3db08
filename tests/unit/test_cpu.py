from __future__ import annotations

import os
from pathlib import Path

import pytest
from modelship.core import cpu
from modelship.core.settings import Settings


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu.cgroup_quota_cpus(tmp_path) == 1.5


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu.cgroup_quota_cpus(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpu.cgroup_quota_cpus(tmp_path) == 0.5


def test_lambda_share_limits_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_affinity_cpus", lambda: 2)
    monkeypatch.setattr(cpu, "cgroup_quota_cpus", lambda: None)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
    assert cpu.intra_op_threads() == 1
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "3538")
    assert cpu.intra_op_threads() == 2
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
    assert cpu.intra_op_threads() == 1


def test_quota_smaller_than_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_affinity_cpus", lambda: 8)
    monkeypatch.setattr(cpu, "cgroup_quota_cpus", lambda: 2.5)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", raising=False)
    assert cpu.available_cpus() == 2
    assert cpu.is_cpu_constrained()


def test_affinity_not_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "cgroup_quota_cpus", lambda: None)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert cpu.available_cpus() == 1


def test_configured_threads_win_and_come_only_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
    assert cpu.intra_op_threads(3) == 3
    settings = Settings.from_env({"MODELSHIP_INTRA_OP_THREADS": "3"})
    assert settings.intra_op_threads == 3
    assert Settings.from_env({}).intra_op_threads is None
    with pytest.raises(ValueError, match="MODELSHIP_INTRA_OP_THREADS"):
        Settings.from_env({"MODELSHIP_INTRA_OP_THREADS": "zero"})
