"""Deployments: which models Orchesity can call, and how.

A deployment is one model at one endpoint with one key. They come from two places:

- the seed's key variables: each of OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY and
  GROK_API_KEY that is set enables a deployment named after its provider, with the
  default kind, model and prices in `FAMILIES` below (Anthropic and Gemini natively:
  kinds "anthropic" and "gemini", their own APIs; the others: their OpenAI-compatible
  endpoints);
- an optional providers file (ORCHESITY_PROVIDERS_FILE, JSON or TOML) that declares any
  number of deployments. An entry with the name of a key-enabled default replaces it;
  `include_defaults = false` in the file leaves the defaults out altogether.

With neither, one `simulated` deployment is configured so the quick start works offline.

Keys never live in the file: an entry names the environment variable that holds its key
(`api_key_env`), and the value is read once, here, at load. The value is kept in a
SecretStr that is excluded from repr, dumps, `describe()` and every error message.

A file Orchesity cannot use stops start-up with a `DeploymentConfigError` naming the
file, the entry (index and name) and the field, for every problem found at once.

A providers file (TOML; the JSON form is `{"deployments": [{...}, ...]}` or just the list):

    include_defaults = true          # keep the deployments enabled by the key variables

    [[deployments]]
    name = "gpt-4o"                  # what callers ask for; unique
    provider = "openai"              # openai | anthropic | gemini | grok | custom
    model = "gpt-4o"                 # base_url, api_key_env and prices default per provider
    priority = 10                    # smaller is preferred

    [[deployments]]
    name = "claude"
    provider = "anthropic"           # kind "anthropic" by default: the native Messages API
    model = "claude-sonnet-4-0"      # kind = "openai_compatible" for Anthropic's compatibility
                                     # layer (no prompt caching controls, thinking, full tools)

    [[deployments]]
    name = "local-llama"
    base_url = "http://localhost:11434/v1"   # provider "custom" (the default): any
    model = "llama3.2"                       # OpenAI-compatible server; no key needed
    max_concurrency = 2
    timeout_seconds = 120
    max_reply_bytes = 16777216       # default: PROVIDER_MAX_REPLY_BYTES
    first_token_timeout_seconds = 60 # a stream's wait for its first token before it fails
                                     # over (default: STREAM_FIRST_TOKEN_TIMEOUT)

    [[deployments]]
    name = "mistral"
    base_url = "https://api.mistral.ai/v1"
    model = "mistral-small-latest"
    api_key_env = "MISTRAL_API_KEY"  # the variable's name, never the key
    price_input_per_1k = 0.0002
    price_output_per_1k = 0.0006

    [[deployments]]
    name = "gemini-embed"
    provider = "gemini"              # kind "gemini" (Gemini's own API) unless the entry says
    model = "gemini-embedding-001"   # kind = "openai_compatible" (its compatibility layer)
    serves = ["embeddings"]

    [[deployments]]
    name = "embed-small"
    provider = "openai"
    model = "text-embedding-3-small"
    serves = ["embeddings"]          # chat | embeddings; default ["chat"] (simulated: both)

    [[deployments]]
    name = "sim-flaky"
    kind = "simulated"
    [deployments.simulation]         # see SimulationSpec
    latency_ms = 300
    failure_rate = 0.2
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from core.settings import SettingsError

if TYPE_CHECKING:
    from core.providers.base import Usage
    from core.settings import Settings

# Which protocol a deployment speaks: OpenAI's chat completions, Anthropic's Messages API
# (core/providers/anthropic.py), Gemini's generateContent (core/providers/gemini.py), or
# none (simulated).
Kind = Literal["openai_compatible", "anthropic", "gemini", "simulated"]
Family = Literal["openai", "anthropic", "gemini", "grok", "custom", "simulated"]
# What a deployment answers: chat completions, embeddings, or both. Chat routing only
# ever picks deployments serving "chat", embeddings routing only "embeddings".
Capability = Literal["chat", "embeddings"]
FailureMode = Literal["mixed", "timeout", "rate_limited", "unavailable", "bad_response", "stream_cut", "client_error"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,63}$"


class DeploymentConfigError(SettingsError):
    """The deployments cannot be used as configured; the message says where and why."""


class FamilyDefaults(BaseModel):
    base_url: str  # of the family's default kind
    model: str
    api_key_env: str
    kind: Kind = "openai_compatible"  # a deployment of the family that names no kind
    compat_base_url: str | None = None  # its OpenAI-compatible endpoint, when `kind` is native
    default_max_tokens: int | None = None
    drop_params: tuple[str, ...] = ()  # for its OpenAI-compatible endpoint
    native_drop_params: tuple[str, ...] = ()  # for its own API (`kind`)


# The four named providers. Anthropic and Gemini are reached natively (their
# compatibility layers lack prompt caching controls, thinking and parts of tool use, and
# refuse parameters or lose structure); OpenAI and Grok through their OpenAI-compatible
# endpoints.
FAMILIES: dict[str, FamilyDefaults] = {
    "openai": FamilyDefaults(base_url="https://api.openai.com/v1", model="gpt-4o-mini", api_key_env="OPENAI_API_KEY"),
    # The Messages API requires max_tokens; the compatibility layer is given one too. It
    # has no seed, and OpenAI's is best effort, so a seeded request is served without it.
    "anthropic": FamilyDefaults(
        base_url="https://api.anthropic.com",
        model="claude-3-5-haiku-latest",
        api_key_env="ANTHROPIC_API_KEY",
        kind="anthropic",
        compat_base_url="https://api.anthropic.com/v1/",
        default_max_tokens=4096,
        drop_params=("seed",),
        native_drop_params=("seed",),
    ),
    "gemini": FamilyDefaults(
        base_url="https://generativelanguage.googleapis.com",
        model="gemini-2.0-flash",
        api_key_env="GEMINI_API_KEY",
        kind="gemini",
        compat_base_url="https://generativelanguage.googleapis.com/v1beta/openai/",
        # Its compatibility layer answers 400 "Unknown name" to these instead of ignoring them.
        drop_params=("seed", "frequency_penalty", "presence_penalty"),
    ),
    "grok": FamilyDefaults(base_url="https://api.x.ai/v1", model="grok-3-mini", api_key_env="GROK_API_KEY"),
}

# Model name prefixes of each family, to tell a caller which key enables a model.
_MODEL_PREFIXES = {"gpt-": "openai", "o1": "openai", "o3": "openai", "o4": "openai",
                   "claude-": "anthropic", "gemini-": "gemini", "grok-": "grok"}


def enable_hint(name: str) -> str | None:
    """How to enable `name` when it is a family, or a model of one, that is not configured."""
    family = name if name in FAMILIES else next(
        (f for prefix, f in _MODEL_PREFIXES.items() if name.startswith(prefix)), None)
    if family is None:
        return None
    what = family if family == name else f"{name} is a {family} model; {family}"
    return (f"{what} is enabled by setting {FAMILIES[family].api_key_env}, or by a deployment "
            f"with provider '{family}' in ORCHESITY_PROVIDERS_FILE")


# USD per 1k tokens (input, output), list prices, for models whose entries give none.
# A model not listed here costs 0 unless its deployment sets prices.
KNOWN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.00015, 0.0006),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4.1": (0.002, 0.008),
    "gpt-4.1-mini": (0.0004, 0.0016),
    "gpt-4.1-nano": (0.0001, 0.0004),
    "claude-3-5-haiku-latest": (0.0008, 0.004),
    "claude-3-7-sonnet-latest": (0.003, 0.015),
    "claude-sonnet-4-0": (0.003, 0.015),
    "gemini-2.0-flash": (0.0001, 0.0004),
    "gemini-2.0-flash-lite": (0.000075, 0.0003),
    "gemini-2.5-flash": (0.0003, 0.0025),
    "gemini-2.5-pro": (0.00125, 0.01),
    "gemini-embedding-001": (0.00015, 0.0),
    "grok-3-mini": (0.0003, 0.0005),
    "grok-3": (0.003, 0.015),
    # embedding models: input tokens only
    "text-embedding-3-small": (0.00002, 0.0),
    "text-embedding-3-large": (0.00013, 0.0),
    "text-embedding-ada-002": (0.0001, 0.0),
}

SIMULATED_MODEL = "orchesity-simulated-1"
SIMULATED_EMBEDDING_MODEL = "orchesity-simulated-embedding-1"


class SimulationSpec(BaseModel):
    """How a `simulated` deployment behaves. Every field has a usable default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=120.0, ge=0)  # before the first token
    ms_per_token: float = Field(default=4.0, ge=0)  # each generated token after that
    jitter: float = Field(default=0.1, ge=0, le=1)  # latency varies by +/- this fraction
    failure_rate: float = Field(default=0.0, ge=0, le=1)  # share of calls that fail
    failure_mode: FailureMode = "mixed"  # mixed: timeout, rate_limited or unavailable
    retry_after_seconds: float = Field(default=1.0, ge=0)  # sent with rate_limited
    reply_tokens: int = Field(default=60, ge=1)  # typical reply length (varies 0.5x-1.5x)
    seed: int | None = None  # same seed, same calls in the same order: same outcomes
    embedding_model: str = Field(default=SIMULATED_EMBEDDING_MODEL, min_length=1)  # the model embeddings name
    embedding_dimensions: int = Field(default=384, ge=1, le=8192)  # unless a request asks for `dimensions`


class DeploymentSpec(BaseModel):
    """One callable deployment. Validated once at start-up; immutable afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    kind: Kind = "openai_compatible"
    provider: Family = "custom"
    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    price_input_per_1k: float = Field(default=0.0, ge=0)
    price_output_per_1k: float = Field(default=0.0, ge=0)
    priority: int = 100  # smaller is preferred (the `priority` strategy tries 1 before 2)
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # how long a stream waits for its first token while another deployment could take it;
    # None: STREAM_FIRST_TOKEN_TIMEOUT's (by default learnt from its TTFTs)
    first_token_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    max_concurrency: int | None = Field(default=None, ge=1)  # None: no limit of ours
    # a reply's bytes (a streamed one's, each event's) past which the call fails over
    max_reply_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    default_max_tokens: int | None = Field(default=None, ge=1)  # used when a request has none
    params: dict[str, Any] = Field(default_factory=dict)  # extra body params on every call
    drop_params: list[str] = Field(default_factory=list)  # body params this endpoint refuses
    stream_usage: bool = True  # ask for the final usage chunk (stream_options.include_usage)
    enabled: bool = True
    # Default ["chat"]; a simulated deployment serves both, so the quick start embeds offline.
    serves: tuple[Capability, ...] = ("chat",)
    simulation: SimulationSpec | None = None
    # Read from the environment variable named by api_key_env; never serialised or shown.
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        kind = data.get("kind", "openai_compatible")
        if kind == "simulated":
            data.setdefault("provider", "simulated")
            data.setdefault("model", SIMULATED_MODEL)
            data.setdefault("simulation", {})
            data.setdefault("serves", ("chat", "embeddings"))
            return data
        if kind == "gemini":
            data.setdefault("provider", "gemini")
        family = FAMILIES.get(data.get("provider"))  # type: ignore[arg-type]
        if family is not None:
            kind = data.setdefault("kind", family.kind)
            compat = kind == "openai_compatible"
            data.setdefault("base_url", family.compat_base_url if compat and family.compat_base_url
                            else family.base_url)
            data.setdefault("model", family.model)
            data.setdefault("api_key_env", family.api_key_env)
            data.setdefault("default_max_tokens", family.default_max_tokens)
            data.setdefault("drop_params", list(family.drop_params if compat else family.native_drop_params))
        prices = KNOWN_PRICES.get(data.get("model")) if isinstance(data.get("model"), str) else None
        if prices is not None:
            data.setdefault("price_input_per_1k", prices[0])
            data.setdefault("price_output_per_1k", prices[1])
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentSpec:
        if not self.serves:
            raise ValueError("serves: name at least one of 'chat', 'embeddings'")
        if len(set(self.serves)) != len(self.serves):
            raise ValueError("serves: each of 'chat', 'embeddings' at most once")
        if self.kind == "simulated":
            if self.provider != "simulated":
                raise ValueError("provider: a simulated deployment has provider 'simulated'")
            return self
        if self.provider == "simulated":
            raise ValueError("provider: 'simulated' needs kind 'simulated'")
        if self.kind == "anthropic":
            if self.provider not in ("anthropic", "custom"):
                raise ValueError(f"kind: provider {self.provider!r} does not serve Anthropic's Messages API")
            if "embeddings" in self.serves:
                raise ValueError("serves: Anthropic's API has no embeddings endpoint; a deployment of kind "
                                 "'anthropic' serves only 'chat'")
        if self.simulation is not None:
            raise ValueError("simulation: only a deployment of kind 'simulated' takes a simulation table")
        if not self.base_url:
            raise ValueError("base_url: required for provider 'custom' (e.g. http://localhost:11434/v1)")
        if not self.base_url.startswith(("https://", "http://")):
            raise ValueError("base_url: must start with https:// or http://")
        if self.kind == "gemini" and "/openai" in urlsplit(self.base_url).path:
            # A providers file written when provider "gemini" meant the compatibility layer.
            raise ValueError("base_url: this is Gemini's OpenAI-compatible endpoint; set kind = "
                             "'openai_compatible' to use it, or leave base_url out for Gemini's own API")
        return self

    # --- what the rest of Orchesity reads ---------------------------------------------------

    @property
    def simulated(self) -> bool:
        return self.kind == "simulated"

    @property
    def embedding_model(self) -> str:
        """The model its embeddings come from: its `model`, or a simulated one's own name."""
        return self.simulation.embedding_model if self.simulation is not None else self.model

    def cost(self, usage: Usage) -> float:
        """USD for one call, from the deployment's prices per 1k tokens."""
        return (
            usage.prompt_tokens * self.price_input_per_1k + usage.completion_tokens * self.price_output_per_1k
        ) / 1000.0

    def describe(self) -> dict[str, Any]:
        """What may be shown to API callers (GET /api/llm/providers): never a key."""
        return {
            "name": self.name,
            "kind": self.kind,
            "provider": self.provider,
            "model": self.model,
            "base_url": redact_url(self.base_url) if self.base_url else None,
            "simulated": self.simulated,
            "serves": list(self.serves),
            "priority": self.priority,
            "timeout_seconds": self.timeout_seconds,
            "first_token_timeout_seconds": self.first_token_timeout_seconds,
            "max_concurrency": self.max_concurrency,
            "price_input_per_1k": self.price_input_per_1k,
            "price_output_per_1k": self.price_output_per_1k,
            "api_key_env": self.api_key_env,
            "key_configured": self.api_key is not None,
        }

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, (redact_url(value) if key == "base_url" and value else value)


def redact_url(url: str) -> str:
    """The URL without any user:password@ part (a proxy URL may carry credentials)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


# --- loading -------------------------------------------------------------------------------


def load_deployments(settings: Settings, *, environ: Mapping[str, str] | None = None) -> list[DeploymentSpec]:
    """Every enabled deployment, in priority order (stable for equal priorities).

    `environ` is where api_key_env variables are looked up (default: the process
    environment, then `.env`); the seed's four key variables come from `settings`.
    """
    env = environ if environ is not None else _process_environ()
    defaults = _key_defaults(settings)
    deployments: dict[str, DeploymentSpec] = {}
    path = settings.ORCHESITY_PROVIDERS_FILE
    if path is not None:
        declared, include_defaults = read_providers_file(Path(path), settings=settings, environ=env)
        if include_defaults:
            deployments.update((spec.name, spec) for spec in defaults)
        for spec in declared:
            deployments[spec.name] = spec  # an entry named like a default replaces it
    else:
        deployments.update((spec.name, spec) for spec in defaults)
    if not deployments and path is None:
        deployments["simulated"] = default_simulated(settings)
    enabled = [spec for spec in deployments.values() if spec.enabled]
    if not enabled:
        raise DeploymentConfigError(f"providers file {path}: no enabled deployment is left to call")
    return sorted(enabled, key=lambda spec: spec.priority)


def default_simulated(settings: Settings) -> DeploymentSpec:
    simulation = SimulationSpec(
        latency_ms=settings.SIMULATED_LATENCY_MS,
        ms_per_token=settings.SIMULATED_MS_PER_TOKEN,
        failure_rate=settings.SIMULATED_FAILURE_RATE,
        seed=settings.SIMULATED_SEED,
    )
    return DeploymentSpec(
        name="simulated",
        kind="simulated",
        priority=1,
        timeout_seconds=settings.PROVIDER_TIMEOUT_SECONDS,
        max_reply_bytes=settings.PROVIDER_MAX_REPLY_BYTES,
        simulation=simulation,
    )


def _key_defaults(settings: Settings) -> list[DeploymentSpec]:
    specs = []
    for priority, (family, defaults) in enumerate(FAMILIES.items(), start=1):
        key = getattr(settings, defaults.api_key_env, None)
        if key is None or not key.get_secret_value():
            continue
        spec = DeploymentSpec(
            name=family, provider=family, priority=priority, timeout_seconds=settings.PROVIDER_TIMEOUT_SECONDS,
            max_reply_bytes=settings.PROVIDER_MAX_REPLY_BYTES,
        )
        specs.append(spec.model_copy(update={"api_key": key}))
    return specs


def read_providers_file(
    path: Path, *, settings: Settings, environ: Mapping[str, str]
) -> tuple[list[DeploymentSpec], bool]:
    """(declared deployments, include_defaults) from a JSON or TOML providers file."""
    where = f"providers file {path}"
    document = _parse_document(path, where)
    if isinstance(document, list):
        entries, include_defaults = document, True
    elif isinstance(document, dict):
        unknown = sorted(set(document) - {"deployments", "include_defaults"})
        if unknown:
            raise DeploymentConfigError(
                f"{where}: unknown top-level key(s) {', '.join(unknown)}; expected 'deployments' "
                "(a list of deployments) and optionally 'include_defaults'"
            )
        entries = document.get("deployments")
        include_defaults = document.get("include_defaults", True)
        if not isinstance(include_defaults, bool):
            raise DeploymentConfigError(f"{where}: include_defaults must be true or false")
    else:
        entries, include_defaults = None, True
    if not isinstance(entries, list) or not entries:
        raise DeploymentConfigError(f"{where}: expected a non-empty list of deployments under 'deployments'")

    problems: list[str] = []
    specs: list[DeploymentSpec] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        label = _entry_label(index, entry)
        if not isinstance(entry, dict):
            problems.append(f"{label}: expected a table/object of fields, got {type(entry).__name__}")
            continue
        secret_fields = sorted(f for f in entry if f.lower() in {"api_key", "key", "token", "apikey", "secret"})
        if secret_fields:
            # Never echo the value: name the field and say where keys belong.
            problems.append(
                f"{label}: {secret_fields[0]}: keys do not belong in the providers file; put the key in an "
                "environment variable and name that variable in api_key_env"
            )
            continue
        entry = dict(entry)
        entry.setdefault("timeout_seconds", settings.PROVIDER_TIMEOUT_SECONDS)
        entry.setdefault("max_reply_bytes", settings.PROVIDER_MAX_REPLY_BYTES)
        try:
            spec = DeploymentSpec.model_validate(entry)
        except ValidationError as exc:
            problems.extend(f"{label}: {_describe_error(err)}" for err in exc.errors(include_url=False))
            continue
        if spec.name in first_index:
            problems.append(f"{label}: name: duplicate of deployments[{first_index[spec.name]}] (names must be unique)")
            continue
        first_index[spec.name] = index
        if spec.api_key_env:
            key = _lookup_key(spec.api_key_env, settings, environ)
            if key is None:
                if spec.enabled:
                    problems.append(f"{label}: api_key_env: environment variable {spec.api_key_env} is not set")
                    continue
            else:
                spec = spec.model_copy(update={"api_key": SecretStr(key)})
        specs.append(spec)
    if problems:
        raise DeploymentConfigError(f"{where}:\n  " + "\n  ".join(problems))
    return specs, include_defaults


def _parse_document(path: Path, where: str) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DeploymentConfigError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DeploymentConfigError(f"{where}: not valid JSON: {exc}") from None
    if suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DeploymentConfigError(f"{where}: not valid TOML: {exc}") from None
    raise DeploymentConfigError(f"{where}: use a .json or .toml file")


def _entry_label(index: int, entry: Any) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"deployments[{index}] ({name!r})" if isinstance(name, str) else f"deployments[{index}]"


def _describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as `field: message`, without echoing the input value."""
    loc = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    if error.get("type") == "missing":
        message = "required"
    return f"{loc}: {message}" if loc else message


def _lookup_key(env_name: str, settings: Settings, environ: Mapping[str, str]) -> str | None:
    value = getattr(settings, env_name, None) if env_name in type(settings).model_fields else None
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not value:
        value = environ.get(env_name)
    return value or None  # empty means unset, as in the settings


def _process_environ() -> Mapping[str, str]:
    """The process environment, falling back to `.env` like the settings do."""
    env_file = Path(".env")
    if not env_file.is_file():
        return os.environ
    from dotenv import dotenv_values

    values = {key: value for key, value in dotenv_values(env_file).items() if value}
    return {**values, **os.environ}

