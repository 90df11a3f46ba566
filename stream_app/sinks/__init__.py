"""Sinks store finished files.  They know names and bytes, never records."""
