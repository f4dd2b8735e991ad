"""On-disk shard formats: Megatron indexed datasets (text tokens) and webdataset tars."""
