"""python -m bench.overhead: see bench/overhead/cli.py and bench/README.md."""

from bench.overhead.cli import main

raise SystemExit(main())
