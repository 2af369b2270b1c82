"""The routing benchmark: every DWA strategy, LiteLLM's two routing strategies and an
oracle against the same simulated traffic, on a simulated clock, driving the real
core/dwa code against a real Redis. Run `python -m bench.routing --help`."""
