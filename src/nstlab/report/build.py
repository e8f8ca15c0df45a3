"""The report stage: Table 1 (all models on the test pairs), Table 2 (the ViT-LoRA ablation grid),
the gallery check, figures and reports/index.html, a gallery that opens from disk.

Every table and page states the profile and its source; demo numbers are never shown as the
paper's: the paper's own values sit in their own, labelled columns for reference.
"""

from pathlib import Path

from nstlab.config import Config
from nstlab.report.figures import image_grid, loss_curves, metric_bars, quality_vs_cost
from nstlab.report.gatys import gatys_section
from nstlab.report.page import write_html
from nstlab.report.tables import write_table
from nstlab.report.results import TABLE1_MARKED, TABLE1_SPREAD, TABLE2_SPREAD, gallery_table, table1, table2


def build_report(
    cfg: Config, reports_dir: Path = Path("reports"), pairs_dir: Path = Path("data/pairs")
) -> dict:
    """Write tables, figures and index.html; returns the paths written."""
    figures_dir = reports_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    from nstlab.report.spread import display

    t1 = table1(cfg)
    t2 = table2(cfg)
    shown1, shown2 = display(t1, TABLE1_SPREAD, TABLE1_MARKED), display(t2, TABLE2_SPREAD, TABLE2_SPREAD)
    write_table(
        t1,
        reports_dir / "table1",
        "Table 1: style transfer models on the test pairs (source: MLflow, every seed of this configuration)",
        cfg.profile,
        shown1,
    )
    write_table(
        t2,
        reports_dir / "table2",
        "Table 2: ViT-LoRA ablation (LoRA rank, targets, layers; source: MLflow, every experiment and seed)",
        cfg.profile,
        shown2,
    )
    figures = [
        image_grid(t1, reports_dir, pairs_dir, cfg.eval.gallery_pairs, figures_dir / "gallery_grid.png"),
        loss_curves(reports_dir / "train", figures_dir / "loss_curves.png"),
        metric_bars(t1, figures_dir / "metrics.png", cfg.profile),
    ]
    figures = [path for path in figures if path is not None]
    gallery = gallery_table(reports_dir, cfg.eval.gallery_pairs)
    write_table(
        gallery,
        reports_dir / "gallery",
        "Does the gallery show learning? (source: reports/outputs, the gallery pairs)",
        cfg.profile,
    )
    trade_off = quality_vs_cost(t2, figures_dir / "quality_vs_cost.png", cfg.profile)
    gatys_html, gatys_figures = gatys_section(cfg, reports_dir)
    page = write_html(cfg, reports_dir, shown1, shown2, figures, gatys_html, trade_off)
    figures += gatys_figures + ([trade_off] if trade_off else [])
    return {"table1": len(t1), "table2": len(t2), "figures": [str(p) for p in figures], "html": str(page)}
