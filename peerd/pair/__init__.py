"""Pair operations as plain async functions with typed results: failover, switchover,
failback, moving a home, the return exchange at start; proxy hooks; the spool sweep."""
