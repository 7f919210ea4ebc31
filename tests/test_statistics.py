"""Paired differences and their t interval, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from fskd.evaluation.statistics import paired_difference


def test_paired_difference_matches_a_hand_computed_t_interval() -> None:
    result = paired_difference([0.01, 0.03, -0.01, 0.02, 0.0])
    # mean 0.01, sample std sqrt(0.001/4) = 0.0158114; t(0.975, 4) = 2.776445
    half = 2.7764451051977987 * math.sqrt(0.001 / 4) / math.sqrt(5)
    assert result["n"] == 5 and result["mean"] == pytest.approx(0.01)
    assert result["low"] == pytest.approx(0.01 - half) and result["high"] == pytest.approx(0.01 + half)
    assert (result["positive"], result["negative"]) == (3, 1)


def test_one_run_has_no_interval_and_bad_input_is_refused() -> None:
    single = paired_difference([0.02])
    assert single["mean"] == 0.02 and math.isnan(single["low"]) and math.isnan(single["std"])
    for bad in ([], [float("nan")], [[0.1, 0.2]]):
        with pytest.raises(ValueError):
            paired_difference(bad)
