"""Pair operations: failover, switchover, failback, proxy hooks, the spool sweep."""
