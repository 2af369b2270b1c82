"""Gateway overhead benchmark: Orchesity, LiteLLM's proxy and a reference forwarder over
one mock upstream, driven by wrk. Run `python -m bench.overhead --help`; see
bench/README.md ("Overhead benchmark") for what is measured and how."""
