"""The examples under examples/ pass, run as a user's project runs them: their own pytest
settings, the plugin (``-p leveret.pytest_plugin``, in case this checkout is not installed)
and, here, ``--leveret-data-dir`` (persistent mode)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = [pytest.mark.leveret_only, pytest.mark.integration]


def test_examples_pass(tmp_path: Path) -> None:
    data_dir = tmp_path / "leveret-data"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("LEVERET_TEST_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLES), "-p", "leveret.pytest_plugin",
         "-p", "no:cacheprovider", "-q", "--leveret-data-dir", str(data_dir)],
        cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout, result.stdout
    assert (data_dir / "FORMAT").exists()  # the session's broker kept its data there
