"""The HTML building blocks of the run report and the ablation comparison: one stylesheet, escaping, number
formatting, tables and images embedded as data URIs (pages are self-contained: no external CSS/JS)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Iterable, Sequence

REPORT_NAME = "report.html"  # the run report, beside the run's log

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;
 color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
td.num{text-align:right;font-family:ui-monospace,monospace}td.mono{font-family:ui-monospace,monospace}
tr.flagged td{background:#fdecea}
.facts th{width:14em}.ok{color:#1a7f37}.bad{color:#b42318;font-weight:600}.muted{color:#777}
.scroll{max-height:480px;overflow:auto;border:1px solid #eee}
img{max-width:100%;height:auto;border:1px solid #eee}
img.scale{max-width:640px;border:none}
.kind-nonfinite,.kind-exploding{color:#b42318;font-weight:600}.kind-vanishing,.kind-dead{color:#9a6700;font-weight:600}
.warn{color:#9a6700}
.verdict{font-size:1.05em;padding:10px 14px;border-radius:6px;border:1px solid #ddd;background:#fafafa}
.verdict.bad{background:#fdecea;border-color:#f3c2bd;font-weight:400}.verdict.ok{background:#eaf6ec;border-color:#bfe3c6}
.verdict.warn{background:#fff6e0;border-color:#f0dca8;color:#5c4300}
.finding{font-size:1.05em;line-height:1.5;padding:10px 14px;border-radius:6px;border:1px solid #d6e2f0;background:#f3f7fc}
.finding ul{margin:4px 0 0 0;padding-left:1.3em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:10px}
figure{margin:0}figcaption{font-size:0.85em;color:#555;text-align:center}
details{margin:10px 0}summary{cursor:pointer;color:#444}
"""


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def num(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return str(f)
    return f"{f:.{digits}g}"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def table(headers: Sequence[str], rows: Iterable[Sequence[tuple[str, str]]], row_classes: Iterable[str] | None = None,
           table_class: str = "") -> str:
    """``rows`` hold (escaped cell html, td class) pairs."""
    out = [f'<table class="{esc(table_class)}"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in headers)
           + "</tr></thead><tbody>"]
    classes = list(row_classes) if row_classes is not None else None
    for k, row in enumerate(rows):
        cls = f' class="{esc(classes[k])}"' if classes and classes[k] else ""
        cells = "".join(f'<td class="{esc(c)}">{v}</td>' if c else f"<td>{v}</td>" for v, c in row)
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def page(title: str, body: str) -> str:
    """A whole self-contained HTML document."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def img(png: Path, alt: str) -> str:
    """An embedded PNG."""
    return f'<img alt="{esc(alt)}" src="{data_uri(png)}">'


def grid(items: Iterable[tuple[str, Path]], captions: bool = True) -> str:
    """Figures side by side (two per row on a wide page): ``items`` are (caption, png); ``captions=False`` when the
    images carry their own title (the caption is then only the alt text)."""
    return '<div class="grid">' + "".join(
        f"<figure>{img(p, c)}" + (f"<figcaption>{esc(c)}</figcaption>" if captions else "") + "</figure>"
        for c, p in items) + "</div>"


def figure(title: str, description: str, png: Path, level: int = 2) -> str:
    """A heading, a one-line description and an embedded PNG."""
    return (f"<h{level}>{esc(title)}</h{level}><p class=\"muted\">{esc(description)}</p>"
            f'<img alt="{esc(title)}" src="{data_uri(png)}">')
