"""Logging, metrics and remote logging."""
