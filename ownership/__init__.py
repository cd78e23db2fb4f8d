"""Ownership: which node owns each account, failover, and routing for proxies."""
