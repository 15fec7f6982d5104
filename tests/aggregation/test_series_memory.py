"""What keeps memory per series down: emptied slice dicts go back to the shared empty one, and
period starts are one int object shared by every series."""

from __future__ import annotations

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.limits import Limits
from collectord.model import KIND_COUNTER
from collectord.ring import Batch

T0 = 1_800_000_000


def test_rolled_slices_release_their_dict_and_share_period_starts() -> None:
    agg = Aggregator(Limits(), AggregationSettings(), T0)
    keys = [(f"m.{i}", ()) for i in range(3)]
    agg.apply(Batch("default", [(k, KIND_COUNTER, 1.0, 1.0, None) for k in keys], T0 + 1))
    agg.advance(T0 + 61)
    series = [agg.table.tenant_table("default")[k] for k in keys]
    assert all(not s.levels[0] for s in series)
    assert len({id(s.levels[0]) for s in series}) == 1  # the one shared empty dict
    for level in (1, 2):  # 1m and 5m: the hour and the day are still open
        starts = [next(iter(s.levels[level])) for s in series]
        assert len({id(start) for start in starts}) == 1
    # A new slice after the release gets a dict of its own again, and the totals stay exact.
    agg.apply(Batch("default", [(keys[0], KIND_COUNTER, 2.0, 1.0, None)], T0 + 65))
    assert series[0].levels[0] and not series[1].levels[0]
    assert series[0].total == 3.0
