"""tests/openai_schemas.json is what scripts/openai_schemas.py makes of OpenAI's spec.

A maintainer's check: it needs the spec beside the repository, at
../shared/openai/openapi.json, and is skipped without it. The schema validations in
test_openai_compat.py read only the committed subset and never need ../shared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO.parent / "shared" / "openai" / "openapi.json"


@pytest.mark.skipif(not SPEC.is_file(), reason=f"OpenAI's spec is not at {SPEC}")
def test_committed_subset_is_in_step_with_the_spec() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "openai_schemas.py"), "--check", "--spec", str(SPEC)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
