"""Loopback services the tests start and stop themselves: an S3-compatible object store, an
MLflow tracking server. Each fixture stops only the process it started."""
