"""Placeholder: commands are being built."""
