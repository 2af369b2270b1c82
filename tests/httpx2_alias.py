"""pytest plugin loaded before anything else (see `addopts` in pyproject.toml).

openai 3.x sends through `httpx2`; pytest-httpx patches `httpx`. Aliasing makes
`import httpx` resolve to httpx2 process-wide, so pytest-httpx's mock transport
intercepts the openai SDK, upstash-redis and our own clients alike. It has to run
before any of them imports httpx, hence a plugin rather than a conftest fixture.
"""

import httpx2

httpx2.alias_httpx()
