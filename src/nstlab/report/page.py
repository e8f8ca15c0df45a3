"""reports/index.html: the tables, figures and gallery on one page that opens from disk."""

import html
from pathlib import Path

import pandas as pd

from nstlab.config import Config
from nstlab.report.tables import figure_html, html_table, profile_note


def write_html(
    cfg: Config,
    reports_dir: Path,
    t1: pd.DataFrame,
    t2: pd.DataFrame,
    figures: list[Path],
    gatys_html: str = "",
    table2_figure: Path | None = None,
) -> Path:
    from nstlab.report.spread import SPREAD_NOTE

    images = "\n".join(figure_html(p, reports_dir) for p in figures)
    trade_off = figure_html(table2_figure, reports_dir) if table2_figure else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nstlab report ({cfg.profile} profile)</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }}
.note {{ background: #fff3cd; border: 1px solid #e0c36a; padding: .6em 1em; }}
table.table {{ border-collapse: collapse; font-size: 13px; margin: 1em 0; }}
table.table td, table.table th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>nstlab: neural style transfer study</h1>
<p class="note" id="profile-note">{html.escape(profile_note(cfg.profile))}</p>
<h2>Table 1: models on the held-out test pairs (from MLflow)</h2>
<p>Loss columns computed by nstlab; <code>paper_reported_*</code> are the paper's published numbers, for reference only.</p>
<div id="table1">{html_table(t1)}</div>
<h2>Table 2: ViT-LoRA ablation (from MLflow)</h2>
<div id="table2">{html_table(t2)}</div>
<p>{html.escape(SPREAD_NOTE)}</p>
{trade_off}
{gatys_html}
<h2>Figures and gallery</h2>
{images}
</body></html>
"""
    path = reports_dir / "index.html"
    path.write_text(page)
    return path
