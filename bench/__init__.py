"""Benchmarks: run against the real server, as a separate process (see `make bench`)."""
