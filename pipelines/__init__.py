"""Apache Beam pipelines: thin glue that runs jamdata's pure functions at scale."""
