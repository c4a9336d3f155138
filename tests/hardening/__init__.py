"""Hardening tests (issue 10): hostile callers, limits, floods, backups, logs, doctor."""
