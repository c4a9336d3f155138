"""End-to-end tests: real ``chatd serve`` subprocesses, real sockets, aiohttp's client."""
