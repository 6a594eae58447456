"""README's speed section is exactly what scripts/update_readme_speed.py renders from the
bench runs kept in docs/bench/: its numbers cannot be typed in or left stale."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_speed_section_is_generated_from_the_kept_bench_runs():
    script = ROOT / "scripts" / "update_readme_speed.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
