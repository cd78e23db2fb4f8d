"""Sans-I/O protocol cores: bytes in, typed events out; no sockets, no asyncio, no store."""
