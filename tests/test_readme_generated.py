"""The README's measured sections are exactly what their scripts render from the runs kept in
docs/bench/ and docs/small_scale.json: their numbers cannot be typed in or left stale."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "script",
    [
        "update_readme_speed.py",
        "update_readme_edge.py",
        "update_readme_small_scale.py",
    ],
)
def test_readme_section_is_generated_from_the_kept_runs(script):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
