# Production image: no embedded Postgres/Redis (the `local` extra) and no dev tools;
# DATABASE_URL and UPSTASH_* / REDIS_URL come from the platform's secrets.
FROM python:3.11-slim
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
WORKDIR /app
# Bytecode compiled at build time: imports are the cold start, and this image's
# filesystem is read-only to the app user.
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy PATH="/app/.venv/bin:$PATH" PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY core ./core
COPY functions ./functions
COPY migrations ./migrations
COPY tools.json pipelines.json ./
RUN uv sync --frozen --no-dev && useradd --system --uid 10001 --no-create-home orchesity
USER orchesity
EXPOSE 8080
# fly.toml names each process group's command; this is the gateway's.
CMD ["orchesity", "serve", "--host", "0.0.0.0", "--port", "8080", "--no-migrate"]
