"""Deployments from settings and a providers file: defaults, validation, secrecy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.providers import (
    DeploymentConfigError,
    DeploymentSpec,
    Usage,
    load_deployments,
    load_registry,
)
from core.providers.config import FAMILIES
from core.settings import Settings, SettingsError, load_settings

SECRET = "sk-live-9f8e7d6c5b4a-TOPSECRET"
ROOT = Path(__file__).resolve().parent.parent


def settings(**values: Any) -> Settings:
    return load_settings(_env_file=None, **values)


def write(tmp_path: Path, document: Any, name: str = "providers.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document) if name.endswith(".json") else document)
    return path


def config_error(tmp_path: Path, document: Any, name: str = "providers.json", **env: str) -> str:
    path = write(tmp_path, document, name)
    with pytest.raises(DeploymentConfigError) as info:
        load_deployments(settings(ORCHESITY_PROVIDERS_FILE=path), environ=env)
    message = str(info.value)
    assert str(path) in message
    return message


# --- defaults --------------------------------------------------------------------------------------


def test_nothing_configured_gives_one_simulated_deployment() -> None:
    specs = load_deployments(settings(), environ={})
    assert [s.name for s in specs] == ["simulated"]
    spec = specs[0]
    assert spec.kind == "simulated" and spec.provider == "simulated" and spec.simulated
    assert spec.simulation is not None and spec.simulation.latency_ms == 120.0


def test_simulated_settings_reach_the_default_deployment() -> None:
    spec = load_deployments(
        settings(SIMULATED_LATENCY_MS=5, SIMULATED_MS_PER_TOKEN=0, SIMULATED_FAILURE_RATE=0.25, SIMULATED_SEED=42,
                 PROVIDER_TIMEOUT_SECONDS=9),
        environ={},
    )[0]
    assert spec.simulation is not None
    assert (spec.simulation.latency_ms, spec.simulation.ms_per_token) == (5, 0)
    assert (spec.simulation.failure_rate, spec.simulation.seed) == (0.25, 42)
    assert spec.timeout_seconds == 9


def test_each_seed_key_enables_its_provider() -> None:
    specs = load_deployments(settings(OPENAI_API_KEY="sk-o", GEMINI_API_KEY="g-key", GROK_API_KEY="x-key"), environ={})
    assert [s.name for s in specs] == ["openai", "gemini", "grok"]  # priority order
    by_name = {s.name: s for s in specs}
    assert by_name["openai"].model == "gpt-4o-mini" and by_name["openai"].base_url == "https://api.openai.com/v1"
    assert by_name["gemini"].model == "gemini-2.0-flash"
    assert by_name["gemini"].kind == "gemini"  # Gemini's own API, not its compatibility layer
    assert by_name["gemini"].base_url == "https://generativelanguage.googleapis.com"
    assert by_name["grok"].model == "grok-3-mini" and by_name["grok"].base_url == "https://api.x.ai/v1"
    assert by_name["grok"].api_key is not None and by_name["grok"].api_key.get_secret_value() == "x-key"
    assert all(s.price_input_per_1k > 0 and s.price_output_per_1k > 0 for s in specs)


def test_anthropic_default_is_the_native_messages_api() -> None:
    (spec,) = load_deployments(settings(ANTHROPIC_API_KEY="sk-ant"), environ={})
    assert spec.kind == "anthropic" and spec.base_url == "https://api.anthropic.com"
    assert spec.model == "claude-3-5-haiku-latest" and spec.default_max_tokens == 4096
    assert (spec.price_input_per_1k, spec.price_output_per_1k) == (0.0008, 0.004)
    assert type(load_registry(settings(ANTHROPIC_API_KEY="sk-ant"), environ={})["anthropic"]).__name__ \
        == "AnthropicAdapter"


def test_anthropic_compatibility_layer_on_request() -> None:
    spec = DeploymentSpec(name="claude-compat", provider="anthropic", kind="openai_compatible")
    assert spec.base_url == "https://api.anthropic.com/v1/" and spec.default_max_tokens == 4096


def test_anthropic_kind_serves_no_embeddings_and_only_anthropic_or_custom(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"deployments": [
        {"name": "claude-embed", "provider": "anthropic", "serves": ["embeddings"]},
        {"name": "odd", "provider": "openai", "kind": "anthropic"}]}, ANTHROPIC_API_KEY="k", OPENAI_API_KEY="k")
    assert "deployments[0] ('claude-embed'): serves: Anthropic's API has no embeddings endpoint" in message
    assert "deployments[1] ('odd'): kind: provider 'openai' does not serve Anthropic's Messages API" in message


def test_cost_from_prices() -> None:
    spec = DeploymentSpec(name="x", provider="openai", price_input_per_1k=0.5, price_output_per_1k=1.5)
    assert spec.cost(Usage(1000, 2000, 3000)) == pytest.approx(0.5 + 3.0)
    assert spec.cost(Usage(0, 0, 0)) == 0


# --- the providers file ----------------------------------------------------------------------------


def test_json_file_declares_deployments_with_keys_from_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "deployments": [
                {"name": "local-llama", "provider": "custom", "base_url": "http://localhost:11434/v1", "model": "llama3.2",
                 "priority": 5, "max_concurrency": 4},
                {"name": "mistral", "base_url": "https://api.mistral.ai/v1", "model": "mistral-small-latest",
                 "api_key_env": "MISTRAL_API_KEY", "price_input_per_1k": 0.0002, "price_output_per_1k": 0.0006},
                {"name": "gpt4o", "provider": "openai", "model": "gpt-4o", "timeout_seconds": 12},
            ]
        },
    )
    specs = load_deployments(
        settings(ORCHESITY_PROVIDERS_FILE=path, OPENAI_API_KEY="sk-openai"), environ={"MISTRAL_API_KEY": "m-key"}
    )
    by_name = {s.name: s for s in specs}
    assert list(by_name) == ["openai", "local-llama", "mistral", "gpt4o"]  # priority 1, 5, then file order
    assert by_name["local-llama"].api_key is None and by_name["local-llama"].max_concurrency == 4
    assert by_name["mistral"].api_key is not None and by_name["mistral"].api_key.get_secret_value() == "m-key"
    gpt4o = by_name["gpt4o"]
    assert gpt4o.api_key is not None and gpt4o.api_key.get_secret_value() == "sk-openai"  # from settings
    assert (gpt4o.price_input_per_1k, gpt4o.price_output_per_1k) == (0.0025, 0.01)  # known model
    assert gpt4o.timeout_seconds == 12 and by_name["mistral"].timeout_seconds == 30.0


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
include_defaults = false

[[deployments]]
name = "sim-fast"
kind = "simulated"
priority = 1

[deployments.simulation]
latency_ms = 5
failure_rate = 0.1
seed = 3

[[deployments]]
name = "vllm"
base_url = "http://gpu-box:8000/v1"
model = "Qwen/Qwen2.5-7B-Instruct"
params = { top_k = 20 }
""",
        "providers.toml",
    )
    specs = load_deployments(settings(ORCHESITY_PROVIDERS_FILE=path, OPENAI_API_KEY="sk-x"), environ={})
    assert [s.name for s in specs] == ["sim-fast", "vllm"]  # include_defaults = false: no "openai"
    assert specs[0].simulation is not None and specs[0].simulation.latency_ms == 5
    assert specs[1].params == {"top_k": 20}


def test_file_entry_replaces_a_default_of_the_same_name(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "openai", "provider": "openai", "model": "gpt-4.1-mini"}])
    (spec,) = load_deployments(settings(ORCHESITY_PROVIDERS_FILE=path, OPENAI_API_KEY="sk-x"), environ={})
    assert spec.model == "gpt-4.1-mini" and spec.priority == 100


def test_disabled_entries_are_left_out_and_need_no_key(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "a", "kind": "simulated"}, {"name": "b", "provider": "grok", "enabled": False}])
    specs = load_deployments(settings(ORCHESITY_PROVIDERS_FILE=path), environ={})
    assert [s.name for s in specs] == ["a"]


def test_malformed_entry_names_file_entry_and_field(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        {"deployments": [
            {"name": "ok", "kind": "simulated"},
            {"name": "cheap", "kind": "simulated", "price_input_per_1k": -1},
        ]},
    )
    assert "deployments[1] ('cheap')" in message and "price_input_per_1k" in message


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        [
            {"name": "a", "kind": "quantum"},
            {"name": "b", "provider": "custom", "model": "m"},
            {"name": "c", "kind": "simulated", "timeout_seconds": "soon"},
            {"kind": "simulated"},
            "not a table",
        ],
    )
    assert "deployments[0] ('a'): kind:" in message
    assert all(f"'{kind}'" in message for kind in ("openai_compatible", "anthropic", "gemini", "simulated"))
    assert "deployments[1] ('b'): base_url: required" in message
    assert "deployments[2] ('c'): timeout_seconds" in message
    assert "deployments[3]: name: required" in message
    assert "deployments[4]: expected a table" in message


def test_duplicate_names(tmp_path: Path) -> None:
    message = config_error(tmp_path, [{"name": "twin", "kind": "simulated"}, {"name": "twin", "kind": "simulated"}])
    assert "deployments[1] ('twin'): name: duplicate of deployments[0]" in message


def test_unknown_field(tmp_path: Path) -> None:
    message = config_error(tmp_path, [{"name": "x", "kind": "simulated", "latency": 5}])
    assert "deployments[0] ('x'): latency: unknown field" in message


def test_missing_key_variable(tmp_path: Path) -> None:
    message = config_error(tmp_path, [{"name": "mistral", "base_url": "https://api.mistral.ai/v1", "model": "m",
                                       "api_key_env": "MISTRAL_API_KEY"}])
    assert "deployments[0] ('mistral'): api_key_env: environment variable MISTRAL_API_KEY is not set" in message
    # a named family without its seed key: same error, naming the variable it defaults to
    message = config_error(tmp_path, [{"name": "g", "provider": "gemini"}], "p2.json")
    assert "api_key_env: environment variable GEMINI_API_KEY is not set" in message


def test_empty_key_variable_counts_as_missing(tmp_path: Path) -> None:
    message = config_error(tmp_path, [{"name": "g", "provider": "grok"}], GROK_API_KEY="")
    assert "GROK_API_KEY is not set" in message


def test_key_written_into_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = config_error(tmp_path, [{"name": "leaky", "provider": "openai", "api_key": SECRET}])
    assert "deployments[0] ('leaky'): api_key: keys do not belong in the providers file" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        ("{ not json", "providers.json", "not valid JSON"),
        ("[[deployments]\nname=", "providers.toml", "not valid TOML"),
        ("deployments: []", "providers.yaml", "use a .json or .toml file"),
        ({"deployments": []}, "providers.json", "non-empty list of deployments"),
        ({"deployment": []}, "providers.json", "unknown top-level key(s) deployment"),
    ],
)
def test_unusable_files(tmp_path: Path, content: Any, name: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DeploymentConfigError) as info:
        load_deployments(settings(ORCHESITY_PROVIDERS_FILE=path), environ={})
    assert str(path) in str(info.value) and expected in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(DeploymentConfigError, match="cannot be read") as info:
        load_deployments(settings(ORCHESITY_PROVIDERS_FILE=path), environ={})
    assert str(path) in str(info.value)


def test_config_errors_are_settings_errors(tmp_path: Path) -> None:
    assert issubclass(DeploymentConfigError, SettingsError)


def test_spec_rules() -> None:
    with pytest.raises(ValueError, match="simulation"):
        DeploymentSpec(name="x", provider="openai", simulation={})
    with pytest.raises(ValueError, match="provider"):
        DeploymentSpec(name="x", kind="simulated", provider="openai")
    with pytest.raises(ValueError, match="base_url"):
        DeploymentSpec(name="x", base_url="ftp://example.com", model="m")
    with pytest.raises(ValueError, match="name"):
        DeploymentSpec(name="has spaces", kind="simulated")
    assert DeploymentSpec(name="openai/gpt-4o", provider="openai").name == "openai/gpt-4o"


# --- secrecy -------------------------------------------------------------------------------------


def test_keys_never_in_repr_dump_or_describe(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "proxy", "base_url": "https://user:pw-secret@proxy.example.com/v1", "model": "m",
                             "api_key_env": "PROXY_KEY"}])
    specs = load_deployments(settings(ORCHESITY_PROVIDERS_FILE=path, OPENAI_API_KEY=SECRET), environ={"PROXY_KEY": SECRET})
    registry = load_registry(settings(ORCHESITY_PROVIDERS_FILE=path, OPENAI_API_KEY=SECRET), environ={"PROXY_KEY": SECRET})
    for spec in specs:
        assert spec.api_key is not None and spec.api_key.get_secret_value() == SECRET
        for text in (repr(spec), str(spec), str(spec.model_dump()), spec.model_dump_json(), json.dumps(spec.describe())):
            assert SECRET not in text
        for text in (repr(spec), str(spec), json.dumps(spec.describe())):
            assert "pw-secret" not in text  # credentials in a proxy URL are not shown either
        assert spec.describe()["key_configured"] is True
    assert SECRET not in repr(registry) and SECRET not in json.dumps(registry.describe())
    assert "pw-secret" not in json.dumps(registry.describe())
    assert registry.describe()[1]["base_url"] == "https://***@proxy.example.com/v1"


def test_describe_fields() -> None:
    (spec,) = load_deployments(settings(GROK_API_KEY=SECRET), environ={})
    assert spec.describe() == {
        "name": "grok",
        "kind": "openai_compatible",
        "provider": "grok",
        "model": "grok-3-mini",
        "base_url": "https://api.x.ai/v1",
        "simulated": False,
        "serves": ["chat"],
        "priority": 4,
        "timeout_seconds": 30.0,
        "first_token_timeout_seconds": None,
        "max_concurrency": None,
        "price_input_per_1k": 0.0003,
        "price_output_per_1k": 0.0005,
        "api_key_env": "GROK_API_KEY",
        "key_configured": True,
    }


# --- registry ------------------------------------------------------------------------------------


def test_registry_resolves_names_and_families(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "gpt4o", "provider": "openai", "model": "gpt-4o"},
                            {"name": "sim", "kind": "simulated", "priority": 200}])
    registry = load_registry(settings(ORCHESITY_PROVIDERS_FILE=path, OPENAI_API_KEY="sk-x"), environ={})
    assert registry.names == ["openai", "gpt4o", "sim"]
    assert [a.name for a in registry.resolve("openai")] == ["openai"]  # a deployment name wins
    assert [a.name for a in registry.resolve("gpt4o")] == ["gpt4o"]
    assert [a.name for a in registry.resolve("simulated")] == ["sim"]  # the family
    assert registry.resolve("nope") == [] and registry.get("nope") is None
    assert "sim" in registry and len(registry) == 3


def test_loading_providers_does_not_import_openai() -> None:
    code = (
        "import sys, asyncio\n"
        "from core.settings import load_settings\n"
        "from core.providers import load_registry, ChatRequest\n"
        "r = load_registry(load_settings(_env_file=None, OPENAI_API_KEY='sk-x'), environ={})\n"
        "print('openai' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_family_table_matches_the_seed_key_settings() -> None:
    for family in FAMILIES.values():
        assert family.api_key_env in Settings.model_fields
