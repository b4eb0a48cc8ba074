"""Side-by-side comparison pages of an ablation: ``ablation.md`` and a self-contained ``ablation.html``.

Both are rebuilt from the variants' own ``gradmon/`` logs, so they can be regenerated at any time.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import polars as pl

from ..record.logfile import read_log
from ..record.tables import module_frame
from ..show.figures import depth_profile_png, heatmap_png

_SKIP_COLS = ("traceback",)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(df: pl.DataFrame) -> str:
    cols = [c for c in df.columns if c not in _SKIP_COLS]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.select(cols).iter_rows():
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _variant_frames(out_dir: Path, rows: list[dict]) -> dict[str, pl.DataFrame]:
    frames = {}
    for r in rows:
        if r.get("status") != "done":
            continue
        try:
            log = read_log(out_dir / r["variant"] / "gradmon")
        except (FileNotFoundError, ValueError):
            continue
        frames[r["variant"]] = module_frame(log.steps, log.modules)
    return frames


def _b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_pages(out_dir: Path, df: pl.DataFrame, rows: list[dict], grid) -> tuple[Path, Path]:
    """Write the flow-profile chart, per-variant heatmaps, ``ablation.md`` and ``ablation.html``."""
    out_dir = Path(out_dir)
    frames = _variant_frames(out_dir, rows)
    profile = heatmaps = None
    if frames:
        profile = depth_profile_png(frames, None, out_dir / "grad_norm_by_depth.png", column="grad_norm",
                                    title="median parameter-gradient norm by depth, per variant")
        heatmaps = {}
        for name, frame in frames.items():
            modules = list(dict.fromkeys(sorted(frame["module"].unique().to_list())))
            heatmaps[name] = heatmap_png(frame, modules, out_dir / f"heatmap-{name}.png", title=name)

    md = [f"# Ablation `{grid.name}`", "", f"{len(rows)} variant(s); varied: {', '.join(grid.axes)}", "",
          markdown_table(df), ""]
    if profile:
        md += ["## Parameter-gradient norm by depth", "", f"![parameter-gradient norm by depth]({profile.name})", ""]
        md += ["## Heatmaps", ""] + [f"![{n}]({p.name})" for n, p in heatmaps.items()]
    md_path = out_dir / "ablation.md"
    md_path.write_text("\n".join(md) + "\n")

    cols = [c for c in df.columns if c not in _SKIP_COLS]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in df.select(cols).iter_rows()
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>",
        html.escape(f"ablation {grid.name}"),
        "</title><style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}"
        ".row{display:flex;flex-wrap:wrap;gap:8px}.row figure{margin:0;width:32%;min-width:300px}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>Ablation {html.escape(grid.name)}</h1>",
        f"<p>{len(rows)} variant(s); varied: {html.escape(', '.join(grid.axes))}</p>",
        f"<div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>",
    ]
    if profile:
        parts += ["<h2>Parameter-gradient norm by depth</h2>", f"<img src='{_b64(profile)}' alt='parameter-gradient norm by depth'>",
                  "<h2>Heatmaps</h2><div class='row'>"]
        parts += [f"<figure><img src='{_b64(p)}' alt='{html.escape(n)}'><figcaption>{html.escape(n)}</figcaption></figure>"
                  for n, p in heatmaps.items()]
        parts.append("</div>")
    parts.append("</body></html>")
    html_path = out_dir / "ablation.html"
    html_path.write_text("".join(parts))
    return md_path, html_path
