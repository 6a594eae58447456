"""README's edge-deployment numbers are exactly what scripts/update_readme_edge.py renders from
the runs kept in docs/bench/: they cannot be typed in or left stale."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_edge_section_is_generated_from_the_kept_runs():
    script = ROOT / "scripts" / "update_readme_edge.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
