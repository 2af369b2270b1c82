"""Every Orchesity setting, read from the environment and `.env`.

Names follow the seed (`003_…`) where it named them. An invalid value stops start-up
with a `SettingsError` that names the variable and what it accepts: the seed's own
`.env.example` once shipped `DWA_ROUTING_STRATEGY=intelligent` and crashed later,
somewhere far from the cause.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import re

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from core.dwa.config import DWAConfig


class RoutingStrategy(str, Enum):
    load_balanced = "load_balanced"
    round_robin = "round_robin"
    random = "random"
    priority = "priority"
    latency = "latency"
    cost = "cost"
    adaptive = "adaptive"


class CacheMode(str, Enum):
    """Which answers the response cache keeps (see core/cache.py)."""

    deterministic = "deterministic"  # temperature 0 or a seed: the same request, the same answer
    all = "all"                      # every answer, sampled ones included
    off = "off"


class LogLevel(str, Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class UpstashEncoding(str, Enum):
    base64 = "base64"
    none = "none"


class SettingsError(ValueError):
    """A setting has a value Orchesity cannot start with; the message names it."""


def read_json_file(path: Path, where: str, error: type[SettingsError]) -> Any:
    """The JSON document of a file a setting names; `error`, starting with `where`, if it
    cannot be read or is not JSON."""
    import json

    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise error(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise error(f"{where}: not valid JSON: {exc}") from None


DATABASE_SCHEMES = ("postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg")


def database_scheme(url: str) -> str:
    """The scheme of a DATABASE_URL, lowercased; ValueError unless it is one we accept.

    The error never repeats the URL: a malformed one may put the password before the
    first "://", so even the scheme is echoed only when it looks like one.
    """
    scheme, sep, _ = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DATABASE_SCHEMES:
        accepted = ", ".join(f"{s}://" for s in DATABASE_SCHEMES)
        got = f" (got {scheme}://)" if sep and re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) else ""
        raise ValueError(f"must start with one of {accepted}{got}")
    return scheme


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        use_enum_values=False,
        env_ignore_empty=True,  # a copied .env.example leaves keys empty: means unset
    )

    # --- Postgres -----------------------------------------------------------------
    DATABASE_URL: SecretStr | None = None
    DATABASE_ECHO: bool = False
    DB_POOL_SIZE: int = Field(default=10, ge=1)
    DB_MAX_OVERFLOW: int = Field(default=10, ge=0)
    DB_POOL_TIMEOUT: float = Field(default=30, gt=0)
    DB_POOL_RECYCLE: int = Field(default=3600, ge=-1)
    # A database that stops answering (frozen, a stalled pooler, a network dropping packets)
    # fails a statement after this long, and a new connection after DB_CONNECT_TIMEOUT_SECONDS,
    # instead of holding the request forever (core/db.py); migrations and index builds are exempt.
    DB_STATEMENT_TIMEOUT_SECONDS: float = Field(default=15.0, gt=0, le=3600)
    DB_CONNECT_TIMEOUT_SECONDS: int = Field(default=5, ge=2, le=600)

    # --- Redis ----------------------------------------------------------------------
    REDIS_ENABLED: bool = True
    REDIS_URL: SecretStr | None = None
    REDIS_DB: int = Field(default=0, ge=0, le=15)
    CACHE_EXPIRE_SECONDS: int = Field(default=3600, ge=1)
    CACHE_MODE: CacheMode = CacheMode.deterministic
    LOG_DRAIN_INTERVAL_SECONDS: float = Field(default=1.0, ge=0, le=3600)
    REDIS_POOL_SIZE: int = Field(default=10, ge=1)
    REDIS_MAX_CONNECTIONS: int = Field(default=20, ge=1)
    REDIS_TIMEOUT_SECONDS: float = Field(default=2.0, gt=0)
    UPSTASH_REDIS_REST_URL: str | None = None
    UPSTASH_REDIS_REST_TOKEN: SecretStr | None = None
    UPSTASH_RETRIES: int = Field(default=1, ge=0, le=10)
    UPSTASH_RETRY_INTERVAL_SECONDS: float = Field(default=0.05, ge=0)
    UPSTASH_ENCODING: UpstashEncoding = UpstashEncoding.base64

    # --- Embedded services (used when DATABASE_URL / Redis settings are absent) ------
    ORCHESITY_DATA_DIR: Path = Path(".orchesity")

    # --- Routing and providers --------------------------------------------------------
    DWA_ROUTING_STRATEGY: RoutingStrategy = RoutingStrategy.load_balanced
    # The DWA's tunables (core/dwa/config.py says what each does; the defaults are its own)
    DWA_AVAILABILITY_HALF_LIFE_S: float = Field(default=60.0, gt=0, le=86_400)
    DWA_LATENCY_HALF_LIFE_S: float = Field(default=6.0, gt=0, le=3600)
    DWA_EVIDENCE_HALF_LIFE_S: float = Field(default=20.0, gt=0, le=3600)
    DWA_STEADY_HALF_LIFE_S: float = Field(default=60.0, gt=0, le=3600)
    DWA_EXPLORE_AFTER_S: float = Field(default=30.0, gt=0, le=3600)
    DWA_EXPLORE_SHARE: float = Field(default=0.005, ge=0, le=0.5)
    DWA_EXPLORE_MIN_S: float = Field(default=0.5, ge=0, le=3600)
    DWA_SHARPNESS: float = Field(default=16.0, ge=1, le=64)
    DWA_SPEED_TOLERANCE: float = Field(default=0.02, ge=0, le=0.5)
    DWA_FAILURE_THRESHOLD: int = Field(default=5, ge=1, le=1000)
    DWA_COOLDOWN_S: float = Field(default=5.0, gt=0, le=3600)
    DWA_COOLDOWN_MAX_S: float = Field(default=30.0, gt=0, le=86_400)
    OPENAI_API_KEY: SecretStr | None = None
    ANTHROPIC_API_KEY: SecretStr | None = None
    GEMINI_API_KEY: SecretStr | None = None
    GROK_API_KEY: SecretStr | None = None
    ORCHESITY_PROVIDERS_FILE: Path | None = None  # JSON/TOML deployments (core/providers/config.py)
    ORCHESITY_TOOLS_FILE: Path | None = Path("tools.json")  # core/tools/loader.py; absent file: no file tools
    ORCHESITY_TOOL_MODULES: str = "core.tools.builtin"  # module prefixes python tools may live under
    PROVIDER_TIMEOUT_SECONDS: float = Field(default=30.0, gt=0, le=3600)
    # A provider's reply past this many bytes (a stream's: any one event) fails the call
    # over: an endless or runaway upstream costs bounded memory (core/providers/replies.py).
    PROVIDER_MAX_REPLY_BYTES: int = Field(default=64 * 1024 * 1024, ge=1024)
    # How long a stream waits for its first token while another deployment could take the
    # call, then fails over: "auto" (from each deployment's TTFTs: scoring.first_token_deadline),
    # seconds, or "off" (the provider timeout); a deployment's first_token_timeout_seconds wins.
    STREAM_FIRST_TOKEN_TIMEOUT: Literal["auto", "off"] | Annotated[float, Field(gt=0, le=3600)] = "auto"
    SIMULATED_LATENCY_MS: float = Field(default=120.0, ge=0)
    SIMULATED_MS_PER_TOKEN: float = Field(default=4.0, ge=0)
    SIMULATED_FAILURE_RATE: float = Field(default=0.0, ge=0, le=1)
    SIMULATED_SEED: int | None = None
    # The model core code embeds with when it names none (core.embeddings.embed_texts): a
    # deployment, provider or model name, or "auto": the DWA's pick among every deployment
    # whose `serves` includes "embeddings" (with no configuration, the simulated one).
    EMBEDDING_MODEL: str = Field(default="auto", min_length=1)
    # How long a stored response (POST /v1/responses with store, the default) can be
    # continued with previous_response_id or read back: OpenAI keeps them 30 days.
    RESPONSES_TTL_SECONDS: int = Field(default=30 * 24 * 3600, ge=60, le=366 * 24 * 3600)

    # --- Application ------------------------------------------------------------------
    REQUEST_TIMEOUT_SECONDS: float = Field(default=60.0, gt=0, le=3600)
    RATE_LIMIT_MAX_WAIT_SECONDS: float = Field(default=5.0, ge=0, le=600)  # a Retry-After waited out in a request
    MAX_REQUEST_BYTES: int = Field(default=4 * 1024 * 1024, ge=1024)
    RECEIVE_TIMEOUT_SECONDS: float = Field(default=15.0, gt=0, le=600)
    CORS_ALLOW_ORIGINS: str = ""  # comma-separated origins allowed to call from a browser; empty: none
    MCP_ALLOWED_HOSTS: str = ""  # Host names /mcp answers besides loopback and PUBLIC_URL's (DNS rebinding)
    CRON_SECRET: SecretStr | None = None
    QSTASH_CURRENT_SIGNING_KEY: SecretStr | None = None
    QSTASH_NEXT_SIGNING_KEY: SecretStr | None = None
    PUBLIC_URL: str | None = None  # how callers reach this deployment (https://…), if behind a proxy
    DEBUG: bool = False
    LOG_LEVEL: LogLevel = LogLevel.INFO
    SECRET_KEY: SecretStr | None = None
    # Read tokens for live streams (core/stream_tokens.py): signed with SECRET_KEY, valid this long
    STREAM_TOKEN_TTL_SECONDS: float = Field(default=300.0, ge=1, le=3600)

    # --- Runs (core/runs/) ------------------------------------------------------------
    RUN_LEASE_SECONDS: float = Field(default=15.0, ge=1, le=600)
    RUN_INLINE_BUDGET_SECONDS: float = Field(default=5.0, ge=0, le=900)
    RUN_DEFAULT_DEADLINE_SECONDS: float = Field(default=3600.0, gt=0, le=30 * 24 * 3600)
    WORKER_POLL_SECONDS: float = Field(default=0.5, gt=0, le=60)  # how often an idle worker looks for runs
    WORKER_CONCURRENCY: int = Field(default=4, ge=1, le=256)  # runs one worker advances at once
    RUN_SWEEP_BUDGET_SECONDS: float = Field(default=20.0, gt=0, le=900)  # how long a cron sweep advances runs
    RUN_BACKGROUND_WORKER: bool = True  # the gateway and runs function advance runs too (under uvicorn)
    # Runs that plan and learn (core/runs/planner.py, core/runs/knowledge.py)
    PLANNER_MODEL: str = Field(default="auto", min_length=1)  # the chat model that plans a goal ("auto": the DWA picks)
    PLANNER_EXAMPLES: int = Field(default=3, ge=0, le=20)  # similar successful runs shown to it as examples
    # finished runs embedded per sweep; 0: no knowledge base (no run's content is embedded)
    KNOWLEDGE_BATCH: int = Field(default=32, ge=0, le=1000)
    WEBHOOK_SECRETS: SecretStr | None = None  # comma-separated whsec_… (Standard Webhooks), several for rotation
    CALLBACK_ALLOW_HOSTS: str = ""  # comma-separated hosts a run's callback_url may reach on a private address
    ORCHESITY_PIPELINES_FILE: Path | None = Path("pipelines.json")  # core/runs/pipelines_file.py; absent: none

    @property
    def dwa_config(self) -> DWAConfig:
        """The DWA's tunables as these settings give them (the rest at their defaults)."""
        from core.dwa.config import DWAConfig

        return DWAConfig(
            availability_half_life_s=self.DWA_AVAILABILITY_HALF_LIFE_S,
            latency_half_life_s=self.DWA_LATENCY_HALF_LIFE_S, evidence_half_life_s=self.DWA_EVIDENCE_HALF_LIFE_S,
            steady_half_life_s=self.DWA_STEADY_HALF_LIFE_S,
            explore_after_s=self.DWA_EXPLORE_AFTER_S, explore_share=self.DWA_EXPLORE_SHARE,
            explore_min_s=self.DWA_EXPLORE_MIN_S, sharpness=self.DWA_SHARPNESS, speed_tolerance=self.DWA_SPEED_TOLERANCE,
            failure_threshold=self.DWA_FAILURE_THRESHOLD, cooldown_s=self.DWA_COOLDOWN_S,
            cooldown_max_s=self.DWA_COOLDOWN_MAX_S)

    @property
    def callback_allow_hosts(self) -> list[str]:
        return [h.strip() for h in self.CALLBACK_ALLOW_HOSTS.split(",") if h.strip()]

    @property
    def webhook_secrets(self) -> list[str]:
        raw = self.WEBHOOK_SECRETS.get_secret_value() if self.WEBHOOK_SECRETS else ""
        return [s.strip() for s in raw.split(",") if s.strip()]

    # --- Who may call (core/auth.py) ----------------------------------------------------
    OPEN_ACCESS: bool = False  # no key needed, ever (loopback only: `orchesity serve` checks)
    OPEN_ACCESS_UNTIL_KEY: bool = False  # no key needed until one exists: set by `orchesity serve`
    AUTH_CACHE_SECONDS: float = Field(default=5.0, ge=0, le=300)
    AUTH_REDIS_TTL_SECONDS: int = Field(default=60, ge=1, le=3600)
    SUPABASE_URL: str | None = None
    SUPABASE_ANON_KEY: SecretStr | None = None
    SUPABASE_JWT_AUDIENCE: str = "authenticated"
    SUPABASE_JWT_ROLE_SCOPES: str = "authenticated=llm,runs,tools"

    @property
    def tool_module_prefixes(self) -> list[str]:
        return [p.strip() for p in self.ORCHESITY_TOOL_MODULES.split(",") if p.strip()]

    @property
    def mcp_hosts(self) -> list[str]:
        """The Host values /mcp answers (host, or host:port): loopback, PUBLIC_URL's, MCP_ALLOWED_HOSTS."""
        hosts = ["localhost", "127.0.0.1", "[::1]"]
        if self.PUBLIC_URL:
            hosts.append(urlsplit(self.PUBLIC_URL).netloc.rpartition("@")[2])
        return hosts + [h.strip() for h in self.MCP_ALLOWED_HOSTS.split(",") if h.strip()]

    @property
    def supabase_role_scopes(self) -> dict[str, list[str]]:
        """SUPABASE_JWT_ROLE_SCOPES as {role: scopes} (validated at load)."""
        return _role_scopes(self.SUPABASE_JWT_ROLE_SCOPES)

    @field_validator("SUPABASE_JWT_ROLE_SCOPES")
    @classmethod
    def _valid_role_scopes(cls, value: str) -> str:
        _role_scopes(value)
        return value

    @field_validator("WEBHOOK_SECRETS")
    @classmethod
    def _webhook_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        import base64
        import binascii

        raw = value.get_secret_value() if value is not None else ""
        for i, secret in enumerate(filter(None, (s.strip() for s in raw.split(","))), start=1):
            try:  # never echo the secret: name its position
                ok = secret.startswith("whsec_") and len(base64.b64decode(secret[6:] + "==", validate=False)) >= 16
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"secret #{i} is not a Standard Webhooks secret: whsec_ followed by the base64 "
                                 "of at least 16 random bytes")
        return value

    @field_validator("MCP_ALLOWED_HOSTS")
    @classmethod
    def _bare_hosts(cls, value: str) -> str:
        for host in filter(None, (h.strip() for h in value.split(","))):
            if "/" in host or "@" in host:
                raise ValueError(f"{host!r}: give host names (or host:port), not URLs")
        return value

    @field_validator("SUPABASE_URL")
    @classmethod
    def _supabase_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (the project URL, e.g. https://<ref>.supabase.co)")
        return value

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            database_scheme(url.get_secret_value())
        return url

    @model_validator(mode="after")
    def _half_lives_and_cooldowns(self) -> "Settings":
        if self.DWA_COOLDOWN_MAX_S < self.DWA_COOLDOWN_S:
            raise ValueError(f"DWA_COOLDOWN_MAX_S ({self.DWA_COOLDOWN_MAX_S:g}) is below DWA_COOLDOWN_S "
                             f"({self.DWA_COOLDOWN_S:g}): an open circuit's cooldown grows up to it")
        if self.DWA_STEADY_HALF_LIFE_S < self.DWA_LATENCY_HALF_LIFE_S:
            raise ValueError(f"DWA_STEADY_HALF_LIFE_S ({self.DWA_STEADY_HALF_LIFE_S:g}) is below "
                             f"DWA_LATENCY_HALF_LIFE_S ({self.DWA_LATENCY_HALF_LIFE_S:g}): it is the steadier "
                             "memory of the same means")
        return self

    @model_validator(mode="after")
    def _upstash_pair(self) -> "Settings":
        if bool(self.UPSTASH_REDIS_REST_URL) != bool(self.UPSTASH_REDIS_REST_TOKEN):
            raise ValueError(
                "UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN must be set together"
            )
        url = self.UPSTASH_REDIS_REST_URL
        if url and not url.startswith(("https://", "http://")):
            raise ValueError("UPSTASH_REDIS_REST_URL must start with https:// (or http://)")
        return self

    @property
    def redis_backend(self) -> str | None:
        """Which Redis this configuration uses: upstash, redis, embedded or None (off)."""
        if not self.REDIS_ENABLED:
            return None
        if self.UPSTASH_REDIS_REST_URL:
            return "upstash"
        if self.REDIS_URL:
            return "redis"
        return "embedded"


def _role_scopes(text: str) -> dict[str, list[str]]:
    """`authenticated=llm,runs;service_role=admin` as {role: [scopes]}."""
    from core.auth import parse_scopes

    mapping: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        role, sep, scopes = part.partition("=")
        if not sep or not role.strip():
            raise ValueError(f"{part!r} is not role=scope,scope")
        mapping[role.strip()] = parse_scopes(scopes)
    return mapping


def _is_secret(name: str) -> bool:
    field = Settings.model_fields.get(name)
    return field is not None and "SecretStr" in str(field.annotation)


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part != "__root__"]
    name = loc[0].upper() if loc else ""
    ctx = error.get("ctx") or {}
    if _is_secret(name):  # never echo a secret, even a malformed one
        return f"{name}: {str(error.get('msg')).removeprefix('Value error, ')}"
    if error.get("type") == "enum" and "expected" in ctx:
        allowed = ctx["expected"].replace("'", "")
        return f"{name}={error.get('input')!r} is not allowed; use one of: {allowed}"
    if not name:  # a model-level rule, such as the Upstash URL/token pair
        return str(ctx.get("error") or error.get("msg"))
    return f"{name}={error.get('input')!r}: {error.get('msg')}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning pydantic's report into one readable SettingsError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors(include_url=False)]
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
