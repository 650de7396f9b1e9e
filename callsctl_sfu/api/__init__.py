"""HTTP and WebSocket surface of the server (aiohttp)."""
