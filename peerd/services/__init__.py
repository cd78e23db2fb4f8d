"""The asyncio servers users and the MTA talk to: sockets, TLS, timeouts; they reach the store through the node."""
