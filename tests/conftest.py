import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running `dsctl` in a subprocess with the test stages loaded."""
    env = dict(os.environ)
    env["DSCTL_PLUGINS"] = "tests.fixture_stages"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["DSCTL_WORKDIR"] = str(tmp_path / "work")
    env.pop("COLUMNS", None)
    return env


@pytest.fixture
def dsctl_cmd():
    return [sys.executable, "-m", "dsctl.cli"]
