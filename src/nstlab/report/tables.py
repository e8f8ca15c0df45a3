"""How the report writes a table: CSV + markdown with the profile note, and HTML fragments.

Shared by the report builder (nstlab.report.build) and its Gatys section (nstlab.report.gatys).
"""

import csv
import html
from pathlib import Path

import pandas as pd


def profile_note(profile: str) -> str:
    if profile == "demo":
        return (
            "Profile: demo. DEMO RESULTS: embedded toy data, backbones of reduced size fitted to those images "
            "(no pretrained weights), a few dozen steps per model on a CPU; reports/gallery.md says which "
            "models keep the content and move toward the style in this budget. They check the pipeline; "
            "they are not the paper's numbers and not comparable to the reference columns."
        )
    return "Profile: paper (COCO + WikiArt, pretrained ViT-B/16 and VGG-19, the paper's schedule)."


def write_table(
    frame: pd.DataFrame, stem: Path, title: str, profile: str, shown: pd.DataFrame | None = None
) -> None:
    """stem.csv (every column, numbers) and stem.md (title + profile note + `shown`, the table
    as displayed with mean ± std cells, and the note on seed spread)."""
    from nstlab.report.spread import SPREAD_NOTE

    frame.to_csv(stem.with_suffix(".csv"), index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.6g")
    shown = frame if shown is None else shown
    body = shown.to_markdown(index=False, floatfmt=".4g") if len(shown) else "_no rows yet_"
    note = f"\n\n{SPREAD_NOTE}" if "n" in shown and len(shown) else ""
    stem.with_suffix(".md").write_text(f"# {title}\n\n{profile_note(profile)}\n\n{body}{note}\n")


def html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>no rows yet</em></p>"
    return frame.to_html(
        index=False,
        float_format=lambda v: f"{v:.4g}",
        na_rep="",
        border=0,
        classes="table",
        render_links=True,
    )  # mlflow_run_url cells become links


def figure_html(path: Path, reports_dir: Path) -> str:
    return (
        f'<figure><img src="{html.escape(str(path.relative_to(reports_dir)))}" alt="{html.escape(path.stem)}">'
        f"<figcaption>{html.escape(path.stem)}</figcaption></figure>"
    )
