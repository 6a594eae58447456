"""Regenerate docs/images/demo_before_after.jpg with the bundled moebius-demo model.

    python scripts/make_readme_example.py

Runs the real CLI (`moebius inpaint … --model moebius-demo`) on scikit-image's public-domain
`rocket` photo (held out from the demo model's training) with a box mask, at the default
settings.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "demo_before_after.jpg"
BOX = (428, 115, 476, 362)  # the right-hand lightning tower


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = Image.fromarray(data.rocket())
        photo.save(tmp / "photo.png")
        mask = Image.new("L", photo.size, 0)
        ImageDraw.Draw(mask).rectangle(BOX, fill=255)
        mask.save(tmp / "mask.png")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "moebius.cli",
                "inpaint",
                str(tmp / "photo.png"),
                str(tmp / "mask.png"),
                "-o",
                str(tmp / "out.png"),
                "--model",
                "moebius-demo",
                "--seed",
                "0",
            ],
            check=True,
        )
        result = Image.open(tmp / "out.png").convert("RGB")
        shown = np.asarray(photo).copy()
        shown[np.asarray(mask) > 0] = (shown[np.asarray(mask) > 0] * 0.4 + 150).astype(np.uint8)
        strip = np.concatenate([np.asarray(photo), shown, np.asarray(result)], axis=1)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strip).save(OUT, quality=90)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
