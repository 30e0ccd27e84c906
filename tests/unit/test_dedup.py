from __future__ import annotations

import pytest

from udfs.dedup import DedupConfig, LocalDeduper, dedup_step

TTL = 1000


def test_first_sighting_is_new_and_stores_now() -> None:
    assert dedup_step(None, 5000, TTL) == (False, 5000)


def test_repeat_within_ttl_is_duplicate_and_keeps_first_sighting() -> None:
    assert dedup_step(5000, 5000, TTL) == (True, 5000)
    assert dedup_step(5000, 5999, TTL) == (True, 5000)


def test_repeat_at_or_after_ttl_is_new() -> None:
    assert dedup_step(5000, 6000, TTL) == (False, 6000)
    assert dedup_step(5000, 90_000, TTL) == (False, 90_000)


def test_clock_going_backwards_is_still_within_ttl() -> None:
    assert dedup_step(5000, 4000, TTL) == (True, 5000)


def test_config_rejects_non_positive_ttl() -> None:
    assert DedupConfig().ttl_ms == 24 * 3600 * 1000
    with pytest.raises(ValueError):
        DedupConfig(ttl_ms=0)
    with pytest.raises(ValueError):
        LocalDeduper(-1)


def test_local_deduper_sequence() -> None:
    d = LocalDeduper(TTL)
    assert d.seen("a", 0) is False
    assert d.seen("a", 10) is True
    assert d.seen("b", 20) is False
    assert d.seen("a", 999) is True  # repeats do not refresh the TTL
    assert d.seen("a", 1000) is False  # expired: new again
    assert d.seen("a", 1500) is True
    assert d.seen("b", 1500) is False
    assert len(d) == 2


def test_reinserted_id_is_not_dropped_by_its_old_expiry_entry() -> None:
    d = LocalDeduper(TTL)
    d.seen("a", 0)
    d.seen("a", 1000)  # new first sighting at 1000
    assert d.expire(1500) == 0  # the entry from t=0 must not evict the one from t=1000
    assert "a" in d
    assert d.seen("a", 1999) is True
    assert d.expire(2000) == 1
    assert "a" not in d


def test_memory_is_bounded_by_ttl_window() -> None:
    d = LocalDeduper(TTL)
    for i in range(10_000):
        assert d.seen(f"e-{i}", i) is False
        assert len(d) <= TTL
    assert len(d) == TTL
    assert d.seen("e-9999", 10_000) is True
    assert d.seen("e-0", 10_000) is False  # long expired
