"""Seed spread for the report: mean ± standard deviation and n over training seeds, and which
differences to the best row are smaller than that spread (so cannot be told from seed noise).

A row's spread is the sample standard deviation of its seeds (NaN for one seed). A difference
to the best (lowest) mean is "within spread" when it is smaller than the larger spread of the
two rows; with one seed on both sides nothing can be said and nothing is marked.
"""

import math

import pandas as pd

BEST, WITHIN = " (best)", " †"
SPREAD_NOTE = (
    "Values are mean ± standard deviation over n training seeds (n = 1: a single run, no spread "
    "shown). (best): the lowest mean of its column. †: differs from the best by less than the "
    "seed spread (the larger standard deviation of the two rows), so the two cannot be told apart "
    "at this n."
)


def summarise(frame: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per `by` group, in first-seen order: each metric's mean, its standard deviation
    over the group's rows (`<metric>_std`, ddof 1) and the group's size `n`."""
    grouped = frame.groupby(by, sort=False, dropna=False)
    stds = grouped[metrics].std(ddof=1).add_suffix("_std")
    return pd.concat([grouped[metrics].mean(), stds, grouped.size().rename("n")], axis=1).reset_index()


def within_spread(means: list[float], stds: list[float]) -> list[bool]:
    """For each row: its difference to the best (lowest) mean is smaller than the seed spread."""
    finite = [index for index, mean in enumerate(means) if not _missing(mean)]
    if not finite:
        return [False] * len(means)
    best = min(finite, key=lambda index: means[index])
    marks = []
    for index, mean in enumerate(means):
        spreads = [s for s in (stds[index], stds[best]) if not _missing(s)]
        closer = bool(spreads) and mean - means[best] < max(spreads)
        marks.append(index != best and index in finite and closer)
    return marks


def mark(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """`<metric>_within_spread` columns (lower is better) beside the means and stds."""
    frame = frame.copy()
    for metric in metrics:
        frame[f"{metric}_within_spread"] = within_spread(list(frame[metric]), list(frame[f"{metric}_std"]))
    return frame


def cell(mean: float, std: float, n: int) -> str:
    """'0.2146 ± 0.0031' for several seeds; the value alone for one (no fake ±)."""
    if _missing(mean):
        return ""
    return f"{mean:.4g}" if n < 2 or _missing(std) else f"{mean:.4g} ± {std:.2g}"


def display(frame: pd.DataFrame, spread: list[str], marked: list[str]) -> pd.DataFrame:
    """The table as shown (markdown, HTML): each `spread` column as mean ± std, the `marked` ones
    with the best / within-spread markers; std and flag columns folded in."""
    shown = frame.copy()
    for metric in spread:
        cells = [cell(*values) for values in zip(frame[metric], frame[f"{metric}_std"], frame["n"])]
        if metric in marked:
            valid = frame[metric].dropna()
            best = valid.idxmin() if len(valid) else None
            cells = [
                text + (BEST if index == best else WITHIN if within else "")
                for index, text, within in zip(frame.index, cells, frame[f"{metric}_within_spread"])
            ]
        shown[metric] = cells
    return shown.drop(columns=[column for column in shown if column.endswith(("_std", "_within_spread"))])


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
