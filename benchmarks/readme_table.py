"""Write a benchmark's markdown between its markers in README.md, leaving the rest untouched.

Every benchmark owns one block, ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->``; rerunning
it replaces only that block, so tables are produced by `make bench`, never typed by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from trajstack.io import write_text_atomic


def fmt_cell(value: float | None, digits: int = 4) -> str:
    """A table cell: `value` to `digits` decimals, or "—" when it is missing or not finite."""
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def ratio_cell(row: dict[str, Any], reference: dict[str, Any]) -> str:
    """"CV / test" ratio of `row`'s MAEs to `reference`'s (`cv_mae`, `test_mae`); test "—" when
    either has no test MAE."""
    cv = row["cv_mae"] / reference["cv_mae"]
    test = (row["test_mae"] / reference["test_mae"]) if row["test_mae"] and reference["test_mae"] else None
    return f"{cv:.3f} / {fmt_cell(test, 3)}"


def markers(marker: str) -> tuple[str, str]:
    """Opening and closing comment of a block; `marker` is its name (``pipeline``)."""
    name = marker.removeprefix("bench:")
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def update_readme_table(readme_path: str | Path, marker: str, markdown: str) -> bool:
    """Replace the block `marker` of the README with `markdown`; append the block if absent.

    Parameters
    ----------
    readme_path : the README file (created when missing).
    marker : block name, e.g. ``pipeline`` for ``<!-- bench:pipeline -->``.
    markdown : the new content between the markers.

    Returns
    -------
    True when the file changed.
    """
    path = Path(readme_path)
    text = path.read_text() if path.exists() else ""
    start, end = markers(marker)
    block = f"{start}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    if text.count(start) > 1:
        raise ValueError(f"{path} holds the marker {start} more than once; keep one block")
    if pattern.search(text):
        updated = pattern.sub(lambda _: block, text, count=1)
    elif start in text or end in text:
        raise ValueError(f"{path} holds only one of {start} / {end}; fix the block by hand")
    else:
        updated = text + ("" if text.endswith("\n") or not text else "\n") + f"\n{block}\n"
    if updated == text:
        return False
    write_text_atomic(path, updated)
    return True


def print_and_write(result: dict[str, Any], markdown: str, readme: str | Path | None, marker: str) -> None:
    """A benchmark's command-line ending: its result as JSON, its table, and the table into
    `readme`'s block `marker` when a README is given."""
    print(json.dumps(result, indent=2, default=str))
    print(markdown)
    if readme:
        update_readme_table(readme, marker, markdown)
