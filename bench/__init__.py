"""Benchmarks: hoopd against direct PostgreSQL and pgbouncer in the same run (``make bench``)."""
