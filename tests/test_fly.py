"""The shipped fly.toml and Dockerfile name only commands, routes and files that exist."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import typer
from fastapi.routing import APIRoute

from core.cli import app as cli

ROOT = Path(__file__).resolve().parents[1]


def _parses(command: str) -> None:
    """`command` is an `orchesity` command line our CLI accepts (parsed, not run)."""
    words = shlex.split(command)
    assert words[0] == "orchesity", command
    group = typer.main.get_command(cli)
    args = words[1:]
    while hasattr(group, "commands"):  # a group: the next word names one of its commands
        name, args = args[0], args[1:]
        assert name in group.commands, f"{command}: no command {name!r}"
        group = group.commands[name]
    group.make_context("orchesity", list(args))  # raises on an unknown option or a bad value


def test_every_command_in_fly_toml_is_a_real_cli_command() -> None:
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    commands = [fly["deploy"]["release_command"], *fly["processes"].values()]
    for command in commands:
        _parses(command)
    groups = set(fly["processes"])
    assert set(fly["http_service"]["processes"]) <= groups
    assert {g for vm in fly["vm"] for g in vm["processes"]} == groups  # every group has a machine size
    assert fly["http_service"]["min_machines_running"] == 0 and fly["http_service"]["auto_start_machines"]


def test_the_health_check_is_a_route_that_needs_no_key() -> None:
    from functions.gateway import ROUTERS

    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    checked = {check["path"] for check in fly["http_service"]["checks"]}
    paths = {route.path for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)}
    assert checked <= paths and checked == {"/api/health"}


def test_the_dockerfile_copies_what_exists_and_runs_as_a_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, flags=re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert re.search(r"^USER (?!root)\S+", dockerfile, flags=re.M)
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, flags=re.M)
    assert cmd is not None
    import json

    _parses(" ".join(shlex.quote(word) for word in json.loads(cmd.group(1))))
