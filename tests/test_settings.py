"""Settings: .env.example stays in step, and bad values stop start-up with a clear message."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from core.settings import RoutingStrategy, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def _example_entries() -> list[tuple[str, bool]]:
    """(name, has a comment) for every KEY= line of .env.example.

    A comment covers the KEY= lines right below it (a group such as the API keys).
    """
    entries, commented = [], False
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("#"):
            commented = True
        elif match := re.match(r"^([A-Z0-9_]+)=", line):
            entries.append((match.group(1), commented))
        else:
            commented = False
    return entries


def test_env_example_lists_every_setting_with_a_comment() -> None:
    entries = _example_entries()
    names = [name for name, _ in entries]
    assert sorted(names) == sorted(Settings.model_fields), "Settings and .env.example differ"
    assert len(names) == len(set(names)), "a setting is listed twice"
    uncommented = [name for name, commented in entries if not commented]
    assert not uncommented, f"no comment above: {uncommented}"


def test_copied_env_example_starts_on_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.DATABASE_URL is None
    assert settings.redis_backend == "embedded"
    assert settings.DWA_ROUTING_STRATEGY is RoutingStrategy.load_balanced


def test_seed_value_intelligent_is_refused_naming_the_variable_and_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DWA_ROUTING_STRATEGY", "intelligent")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert "DWA_ROUTING_STRATEGY='intelligent'" in message
    for strategy in RoutingStrategy:
        assert strategy.value in message


def test_several_bad_values_are_all_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_DB", "99")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert "REDIS_DB" in str(info.value) and "LOG_LEVEL" in str(info.value)


def test_upstash_url_without_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "https://example.upstash.io")
    with pytest.raises(SettingsError, match="UPSTASH_REDIS_REST_TOKEN"):
        load_settings(_env_file=None)


def test_a_steady_latency_memory_shorter_than_the_fast_one_is_refused_naming_both(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DWA_STEADY_HALF_LIFE_S", "3")
    with pytest.raises(SettingsError, match="DWA_STEADY_HALF_LIFE_S.*DWA_LATENCY_HALF_LIFE_S"):
        load_settings(_env_file=None)
    monkeypatch.setenv("DWA_LATENCY_HALF_LIFE_S", "2")
    assert load_settings(_env_file=None).dwa_config.steady_half_life_s == 3.0


def test_backend_choice_follows_settings() -> None:
    assert load_settings(_env_file=None, REDIS_ENABLED=False).redis_backend is None
    assert load_settings(_env_file=None, REDIS_URL="redis://localhost:6379/0").redis_backend == "redis"
    upstash = load_settings(_env_file=None, REDIS_URL="redis://x", UPSTASH_REDIS_REST_URL="https://u.io",
                            UPSTASH_REDIS_REST_TOKEN="tok")
    assert upstash.redis_backend == "upstash"


def test_secrets_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-live-very-secret"
    settings = load_settings(_env_file=None, OPENAI_API_KEY=secret, DATABASE_URL=f"postgresql://u:{secret}@h/db")
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
