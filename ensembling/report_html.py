"""The report's HTML page: a plain, self-contained index.html beside its PNGs (no JS, no CDN)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.blend td { font-weight: bold; background: #f4f8ff; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.85em; }
"""


@dataclass
class Section:
    """One heading with paragraphs, tables (HTML strings) and figures (file, caption)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)


def score_table(reports: dict[str, dict[str, Any]], highlight: set[str]) -> str:
    """Rows: models; columns: overall MAE, per axis, per horizon (from `mae_report`s)."""
    first = next(iter(reports.values()))
    axes, horizons = list(first["per_axis"]), list(first["per_horizon"])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["model", "MAE", *axes, *horizons])
    rows = []
    for name, rep in reports.items():
        cells = [rep["mae"], *(rep["per_axis"][a] for a in axes),
                 *(rep["per_horizon"][h] for h in horizons)]
        css = ' class="blend"' if name in highlight else ""
        rows.append(f"<tr{css}><td>{html.escape(name)}</td>"
                    + "".join(f"<td>{v:.4f}</td>" for v in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render(title: str, subtitle: str, sections: list[Section]) -> str:
    """The full page."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class='note'>{html.escape(subtitle)}</p>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.extend(f"<p>{html.escape(p)}</p>" for p in section.paragraphs)
        parts.extend(section.tables)
        for file, caption in section.figures:
            parts.append(f"<figure><img src='{html.escape(file)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
