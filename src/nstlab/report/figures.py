"""The report's figures: loss curves, metric bars, quality vs cost (with its Pareto front), the
gallery grid."""

import json
from pathlib import Path

import pandas as pd


def loss_curves(logs_dir: Path, path: Path) -> Path | None:
    """Train (thin) and validation (markers) total loss per trained model, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = sorted(p.parent for p in logs_dir.glob("*/train_log.csv"))
    if not logs:
        return None
    columns = 3
    rows = -(-len(logs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, folder in zip(axes.flat, logs):
        train = pd.read_csv(folder / "train_log.csv")
        axis.plot(train["step"], train["total"], lw=1, label="train total")
        if (folder / "val_log.csv").is_file():
            val = pd.read_csv(folder / "val_log.csv")
            axis.plot(val["step"], val["score"], "o-", ms=3, label="val λc·Lc+λs·Ls")
        axis.set_title(folder.name)
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(logs) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def metric_bars(frame: pd.DataFrame, path: Path, profile: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if frame.empty:
        return None
    metrics = ["paper_content_loss", "paper_style_loss", "ssim_content", "latency_ms"]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for axis, metric in zip(axes, metrics):
        axis.bar(frame["model"], frame[metric], color="tab:blue")
        axis.set_title(metric)
        axis.tick_params(axis="x", rotation=45)
    figure.suptitle(f"Test-pair metrics ({profile} profile)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def pareto_front(costs: list[float], losses: list[float]) -> list[bool]:
    """True for each point that no other point beats: cost and loss both no higher, one lower."""
    points = list(zip(costs, losses))
    return [
        not any(
            other_cost <= cost and other_loss <= loss and (other_cost, other_loss) != (cost, loss)
            for other_cost, other_loss in points
        )
        for cost, loss in points
    ]


def quality_vs_cost(t2: pd.DataFrame, path: Path, profile: str) -> Path | None:
    """Table 2 as a trade-off: content and style loss against trainable parameters (one labelled
    point per configuration, ± one standard deviation over its seeds as error bars, Pareto front
    of the means joined), and training pairs/s when the runs logged it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = t2.dropna(subset=["content_loss", "style_loss"])
    if rows.empty:
        return None
    panels = [("content_loss", "content loss"), ("style_loss", "style loss")]
    if rows["pairs_per_s"].notna().any():
        panels.append(("pairs_per_s", "training pairs/s (higher is faster)"))
    labels = [
        f"r{r} {t} e{e}d{d}"
        for r, t, e, d in zip(rows["r"], rows["targets"], rows["encoder_layers"], rows["decoder_layers"])
    ]
    params_m = rows["trainable_parameters"] / 1e6
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for axis, (column, title) in zip(axes[0], panels):
        values = rows[column]
        axis.scatter(params_m, values, color="tab:blue", zorder=2)
        spread = rows.get(f"{column}_std")
        if spread is not None and spread.notna().any():  # n = 1 rows get no bar
            axis.errorbar(
                params_m,
                values,
                yerr=spread.fillna(0),
                fmt="none",
                ecolor="tab:blue",
                capsize=3,
                zorder=1,
                label="± 1 std over seeds",
            )
        for x, y, label in zip(params_m, values, labels):
            axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if column != "pairs_per_s":  # speed is context; the front is over quality and size
            front = pareto_front(list(params_m), list(values))
            best = sorted((x, y) for x, y, keep in zip(params_m, values, front) if keep)
            axis.plot(*zip(*best), "o--", color="tab:red", mfc="none", ms=11, label="Pareto front")
            axis.legend(fontsize=7)
        axis.set_title(title)
        axis.set_xlabel("trainable parameters (M)")
    figure.suptitle(
        f"ViT-LoRA ablation: quality vs cost ({profile} profile; lower loss, fewer parameters is better)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def image_grid(
    frame: pd.DataFrame, reports_dir: Path, pairs_dir: Path, rows_wanted: int, path: Path
) -> Path | None:
    """Rows = test pairs; columns = content, style, each evaluated model's output."""
    from PIL import Image

    from nstlab.evaluation.grids import save_grid

    models = [m for m in frame["model"] if (reports_dir / "outputs" / m / "pairs.json").is_file()]
    if not models:
        return None
    pairs = json.loads((reports_dir / "outputs" / models[0] / "pairs.json").read_text())[:rows_wanted]
    rows = []
    for pair in pairs:
        row = [Image.open(pair["content"]).convert("RGB"), Image.open(pair["style"]).convert("RGB")]
        for model in models:
            output = reports_dir / "outputs" / model / f"{pair['pair']:04d}.png"
            row.append(
                Image.open(output).convert("RGB") if output.is_file() else Image.new("RGB", (8, 8), "white")
            )
        rows.append(row)
    return save_grid(rows, path, header=["content", "style", *models])
