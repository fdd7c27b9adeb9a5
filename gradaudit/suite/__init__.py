"""Suites: many cases (a zoo) on many backends, each job in its own worker process, with a result store."""
