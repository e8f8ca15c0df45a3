"""Seed spread: mean ± std and n on known numbers, and the 'within spread' marker."""

import math

import pandas as pd

from nstlab.report.spread import BEST, WITHIN, cell, display, mark, summarise, within_spread


def test_summarise_gives_mean_sample_std_and_n_per_configuration():
    runs = pd.DataFrame({"config": ["a", "a", "a", "b"], "loss": [1.0, 2.0, 3.0, 5.0]})
    summary = summarise(runs, ["config"], ["loss"]).set_index("config")
    assert list(summary.loc["a", ["loss", "loss_std", "n"]]) == [2.0, 1.0, 3]
    assert summary.loc["b", "loss"] == 5.0 and summary.loc["b", "n"] == 1
    assert math.isnan(summary.loc["b", "loss_std"])


def test_a_difference_to_the_best_smaller_than_the_larger_spread_is_marked():
    nan = float("nan")
    # best is row 0 (1.0 ± 1.0): row 1 is 0.5 away (< 1.0), row 2 is 2.0 away (> 1.0)
    assert within_spread([1.0, 1.5, 3.0], [1.0, 0.2, 0.1]) == [False, True, False]
    # the spread of the row itself counts too: 0.5 away, its own std 0.6
    assert within_spread([1.0, 1.5], [nan, 0.6]) == [False, True]
    assert within_spread([1.0, 1.5], [nan, nan]) == [False, False]  # n = 1 everywhere: nothing to say
    assert within_spread([nan, 2.0, 1.0], [nan, 5.0, 1.0]) == [False, True, False]


def test_cells_show_a_spread_only_where_there_is_one():
    assert cell(2.0, 1.0, 3) == "2 ± 1"
    assert cell(0.21456, 0.0031, 2) == "0.2146 ± 0.0031"
    assert cell(5.0, float("nan"), 1) == "5"  # n = 1: the value, no fake ±
    assert cell(float("nan"), float("nan"), 1) == ""


def test_display_folds_std_into_the_cell_and_marks_best_and_within_spread():
    frame = mark(
        pd.DataFrame(
            {"config": ["a", "b", "c"], "loss": [1.0, 1.5, 3.0], "loss_std": [1.0, 0.2, 0.1], "n": [3, 3, 3]}
        ),
        ["loss"],
    )
    shown = display(frame, ["loss"], ["loss"])
    assert list(shown.columns) == ["config", "loss", "n"]
    assert list(shown["loss"]) == ["1 ± 1" + BEST, "1.5 ± 0.2" + WITHIN, "3 ± 0.1"]
