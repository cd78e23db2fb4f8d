"""LMTP delivery: the front (protocol on a socket), the worker processes, the store backend."""
