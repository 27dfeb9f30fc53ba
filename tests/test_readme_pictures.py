"""The README's pictures: each one it shows is in the repository, written by scripts/readme_pictures.py
(``python -m scripts.readme_pictures --out docs/images``), and small enough to commit."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # scripts/ is not an installed package; plain `pytest` does not put the root first
    sys.path.insert(0, str(ROOT))

from scripts import readme_pictures  # noqa: E402

IMAGES = ROOT / "docs" / "images"
MAX_TOTAL_BYTES = 400_000


def shown_in_readme() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"!\[[^\]]*\]\(docs/images/([^)]+)\)", readme)


def test_the_readme_shows_every_picture_the_script_makes_and_nothing_else():
    assert sorted(shown_in_readme()) == sorted(readme_pictures.PICTURES)


def test_the_pictures_are_in_the_repository_as_small_pngs():
    total = 0
    for name in readme_pictures.PICTURES:
        path = IMAGES / name
        assert path.is_file(), f"{path} is missing: python -m scripts.readme_pictures --out docs/images makes it"
        with Image.open(path) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 100
        total += path.stat().st_size
    assert total <= MAX_TOTAL_BYTES, f"the README's pictures take {total} bytes"
