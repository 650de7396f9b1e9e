"""Scripted participants (aiortc) for tests, checks and load tests."""
