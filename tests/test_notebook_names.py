"""Every notebook a config or the README names is one of the course's (their names, as the
course's repository spells them: tests/course_notebooks.txt)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_named_notebooks_exist():
    known = set((ROOT / "tests" / "course_notebooks.txt").read_text().split())
    files = [ROOT / "README.md", *ROOT.glob("configs/**/*.yaml"), *ROOT.glob("dlexp/**/*.py")]
    named = {
        (name, f.relative_to(ROOT).as_posix())
        for f in files
        for name in re.findall(r"DUDL_[A-Za-z0-9_]*[A-Za-z0-9]", f.read_text())
    }
    section = lambda n: any(k.startswith(n + "_") for k in known)  # noqa: E731 (DUDL_metaparams_*)
    wrong = sorted((n, f) for n, f in named if n not in known and not section(n))
    assert not wrong, f"not a course notebook: {wrong}"
