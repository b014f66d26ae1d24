"""The pure backoff rule."""

from __future__ import annotations

import pytest

from sidecar.pns.backoff import backoff_delay


def test_delay_doubles_with_equal_jitter_up_to_the_cap():
    low = [backoff_delay(n, None, rng=lambda: 0.0) for n in range(1, 9)]
    high = [backoff_delay(n, None, rng=lambda: 0.999999) for n in range(1, 9)]
    assert low == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert high == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0], rel=1e-5)


def test_retry_after_is_a_lower_bound_and_not_capped():
    assert backoff_delay(1, 60.0, rng=lambda: 0.5) == 60.0
    assert backoff_delay(8, 2.0, rng=lambda: 0.5) == pytest.approx(7.5)


def test_odd_inputs_stay_sane():
    assert backoff_delay(0, None, rng=lambda: 0.0) == pytest.approx(0.1)
    assert backoff_delay(10_000, None, rng=lambda: 0.0) == pytest.approx(5.0)
    assert backoff_delay(1, -5.0, rng=lambda: 0.0) == pytest.approx(0.1)
    assert backoff_delay(3, None, base=1.0, cap=100.0, rng=lambda: 0.0) == pytest.approx(2.0)
