# Production image: no embedded Postgres/Redis (the `local` extra) and no dev tools;
# DATABASE_URL and UPSTASH_* / REDIS_URL come from the platform's secrets.
FROM python:3.11-slim
COPY --from=ghcr.io/astral-sh/uv:latest /uv /usr/local/bin/uv
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy PATH="/app/.venv/bin:$PATH"
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY core ./core
COPY functions ./functions
COPY migrations ./migrations
RUN uv sync --frozen --no-dev
EXPOSE 8080
CMD ["orchesity", "serve", "--host", "0.0.0.0", "--port", "8080", "--no-migrate"]
