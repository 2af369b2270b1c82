"""tests/openai_schemas.json is what scripts/openai_schemas.py makes of OpenAI's spec.

A maintainer's check: it needs OpenAI's spec where the script looks for it (beside the
repository, its DEFAULT_SPEC), and is skipped without it. The schema validations in
test_openai_compat.py read only the committed subset and never need the spec.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "openai_schemas.py"
_spec = importlib.util.spec_from_file_location("openai_schemas", SCRIPT)
assert _spec is not None and _spec.loader is not None
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)
SPEC: Path = _script.DEFAULT_SPEC


@pytest.mark.skipif(not SPEC.is_file(), reason=f"OpenAI's spec is not at {SPEC}")
def test_committed_subset_is_in_step_with_the_spec() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--spec", str(SPEC)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
