"""Shards of ``ntulm embed``: the split covers every post once, and bad specs are one-line errors."""

import pytest

from ntulm.errors import ConfigError
from ntulm.lm.shards import parse_shard, shard_of


def test_shards_partition_the_stream():
    items = list(range(17))
    parts = [list(shard_of(iter(items), i, 4)) for i in range(4)]
    assert sorted(sum(parts, [])) == items and [len(p) for p in parts] == [5, 4, 4, 4]
    assert parts[1] == [1, 5, 9, 13]


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_specs(spec):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(spec)
    assert parse_shard("2/3") == (2, 3)
