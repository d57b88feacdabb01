"""summarize_errors (what the demo and the replay report as median / p95 / max error, fix rate, within-2σ fraction and
fixes > 50 m) on hand-made errors and sigmas; every expected value is worked out by hand in the comments."""

import math

import numpy as np
import pytest

from mobilegeo_ros.eval.localization import summarize_errors

NAN = float("nan")

# 8 queries; 6 fixes interleaved with 2 no-fixes. The no-fix rows carry a large, finite "error" and a small sigma on
# purpose: a summary that forgot the is_fix mask would see max 1000 m, 2 fixes > 50 m and a different median.
ERRORS = [1.0, 1000.0, 2.0, 3.0, 4.0, 50.0, 900.0, 100.0]
SIGMAS = [0.5, 1.0, 0.5, 2.0, 1.0, 30.0, 1.0, 10.0]
IS_FIX = [True, False, True, True, True, True, False, True]


def test_summary_of_hand_made_errors():
    s = summarize_errors(np.array(ERRORS), np.array(SIGMAS), np.array(IS_FIX))
    assert s.queries == 8
    assert s.fixes == 6
    assert s.fix_rate == pytest.approx(6 / 8)
    # fix errors sorted: 1, 2, 3, 4, 50, 100 -> median = (3 + 4) / 2
    assert s.median_error_m == pytest.approx(3.5)
    # p95 with linear interpolation: rank (6 - 1) * 0.95 = 4.75 -> 50 + 0.75 * (100 - 50)
    assert s.p95_error_m == pytest.approx(87.5)
    assert s.max_error_m == pytest.approx(100.0)
    # sigmas of the fixes: 0.5 + 0.5 + 2 + 1 + 30 + 10 = 44 over 6
    assert s.mean_sigma_m == pytest.approx(44.0 / 6.0)
    # e <= 2 sigma: 1 <= 1 yes (boundary counts), 2 <= 1 no, 3 <= 4 yes, 4 <= 2 no, 50 <= 60 yes, 100 <= 20 no
    assert s.within_2sigma_fraction == pytest.approx(3 / 6)
    # > 50 m: only 100 (50 itself is not wrong); the no-fix rows (1000, 900) do not count
    assert s.wrong_confident_fixes == 1
    assert summarize_errors(ERRORS, SIGMAS, IS_FIX, wrong_threshold_m=3.5).wrong_confident_fixes == 3  # 4, 50, 100


def test_summary_as_dict_and_runs_without_fixes():
    d = summarize_errors(np.array(ERRORS), np.array(SIGMAS), np.array(IS_FIX)).as_dict()
    assert d["fixes"] == 6 and d["median_error_m"] == pytest.approx(3.5) and d["within_2sigma_fraction"] == 0.5
    # no fix at all: counts are zero, the statistics are undefined (None in the report, not 0, which would read
    # as "perfect")
    none = summarize_errors(np.array([NAN, 5.0]), np.array([NAN, 1.0]), np.array([False, False]))
    assert none.queries == 2 and none.fixes == 0 and none.fix_rate == 0.0 and none.wrong_confident_fixes == 0
    for key in ("median_error_m", "p95_error_m", "max_error_m", "mean_sigma_m", "within_2sigma_fraction"):
        assert math.isnan(getattr(none, key)), key
        assert none.as_dict()[key] is None, key
    # a single fix: every statistic is that fix
    one = summarize_errors([7.0], [3.0], [True])
    assert (one.median_error_m, one.p95_error_m, one.max_error_m, one.mean_sigma_m) == (7.0, 7.0, 7.0, 3.0)
    assert one.fix_rate == 1.0 and one.within_2sigma_fraction == 0.0  # 7 > 2 * 3
