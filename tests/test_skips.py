"""A test that cannot run here is skipped on a workstation and fails under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skips import unavailable

ROOT = Path(__file__).resolve().parents[1]


def test_without_ci_a_missing_tool_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^socat is not installed$"):
        unavailable("socat is not installed")


@pytest.mark.parametrize("value", ["true", "TRUE"])
def test_under_ci_a_missing_tool_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true, so not skipped: socat is not"):
        unavailable("socat is not installed")


def test_ci_false_is_not_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        unavailable("socat is not installed")


def _pytest_without_tools(ci: str | None) -> subprocess.CompletedProcess[str]:
    """One netns test run by a pytest of its own on a PATH with no tools at all (so
    the netns fixture finds no ``ip``: nothing is created), as ``make test`` runs it."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(Path(sys.executable).parent / "no-tools-here")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", "-q",
         "tests/netns/test_netns_selftest.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_netns_tests_without_their_tools_skip_on_a_workstation() -> None:
    done = _pytest_without_tools(None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SKIPPED" in done.stdout and "ip is not installed" in done.stdout


def test_netns_tests_without_their_tools_fail_under_ci() -> None:
    """pytest -ra's summary names each test that could not run, and why."""
    done = _pytest_without_tools("true")
    assert done.returncode == 1, done.stdout + done.stderr
    summary = done.stdout.split("short test summary info", 1)[1]
    errors = [line for line in summary.splitlines() if line.startswith("ERROR ")]
    assert errors and all(
        "CI=true, so not skipped: netns integration tests: ip is not installed" in line
        for line in errors
    ), summary
    assert "SKIPPED" not in done.stdout and " passed" not in done.stdout


def test_hypothesis_examples_have_no_deadline() -> None:
    """tests/conftest.py's profile: an example slowed by a loaded machine is not a failure."""
    from hypothesis import settings

    assert settings.default.deadline is None
