"""Dataset statistics: mergeable per-shard aggregates, the report and comparisons."""
