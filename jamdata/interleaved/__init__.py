"""Interleaved mixed-modal documents, templates and the CM3 objective."""
