"""Benchmarks. Each one writes a JSON result and prints a table; see bench/README.md."""
