"""The sse-notify benchmark suite: ``python -m bench`` (see bench/README.md)."""
