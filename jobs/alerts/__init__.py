"""Alerts without Prometheus: an email and a webhook when a job fails for good or too many runs fail."""
