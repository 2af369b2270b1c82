"""The effective registry: the tools file's tools, and those registered through the API.

Every definition is an immutable `name@version`. The file (tools.json, read-only in
production) is loaded once per process; API registrations live in Postgres
(`tool_registrations`). A name the file defines cannot be registered through the API
(the file is the source of truth for it), and a `name@version` once registered keeps
its definition: registering the same definition again is a no-op, a different one under
the same version is refused, so a caller holding `name@version` always gets what it
was tested against. `name` alone means its newest version: the file's last, or the
API's most recently registered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from core.tools.loader import Loaded, parse_definition, read_tools_file, unavailable_reason
from core.tools.model import NAME, VERSION, Tool

if TYPE_CHECKING:
    from core.db import Database
    from core.settings import Settings

_REF = re.compile(f"^({NAME[1:-1]})(?:@({VERSION[1:-1]}))?$")


class ToolNotFound(LookupError):
    """No tool has this name (or name@version)."""


class ToolConflict(ValueError):
    """The registration clashes with the file or with a name@version already taken."""


class ToolDefinitionError(ValueError):
    """A definition the registry refuses; `problems` has every one, "field: message"."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Entry:
    """A tool as the registry holds it: its definition, where it came from, whether it can run."""

    tool: Tool
    source: Literal["file", "api"]
    unavailable: str | None = None
    created_at: str | None = None
    created_by: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"ref": self.tool.ref, "etag": self.tool.etag, "source": self.source,
                "available": self.unavailable is None, "unavailable_reason": self.unavailable,
                "created_at": self.created_at, "created_by": self.created_by,
                "definition": self.tool.model_dump(mode="json", exclude_none=True)}


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`name` or `name@version` as (name, version or None); ToolNotFound if malformed."""
    match = _REF.match(ref)
    if match is None:
        raise ToolNotFound(f"{ref!r} is not a tool name (or name@version)")
    return match.group(1), match.group(2)


class ToolRegistry:
    def __init__(self, settings: Settings, db: Database, file_tools: list[Loaded]) -> None:
        self.settings = settings
        self.db = db
        self._file: dict[str, list[Entry]] = {}  # name -> versions in file order
        for loaded in file_tools:
            entry = Entry(loaded.tool, "file", loaded.unavailable)
            self._file.setdefault(loaded.tool.name, []).append(entry)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> ToolRegistry:
        """The registry of ORCHESITY_TOOLS_FILE; a file it cannot use raises ToolsFileError
        listing every problem. At the default path, a missing file means no file tools."""
        path = settings.ORCHESITY_TOOLS_FILE
        explicit = "ORCHESITY_TOOLS_FILE" in settings.model_fields_set
        if path is None or (not explicit and not path.exists()):
            return cls(settings, db, [])
        return cls(settings, db, read_tools_file(path, settings))

    @property
    def file_entries(self) -> list[Entry]:
        return [entry for versions in self._file.values() for entry in versions]

    # -- reading --------------------------------------------------------------------------
    async def entries(self) -> list[Entry]:
        """Every tool's newest version, the file's first, then the API's by name."""
        newest = {name: versions[-1] for name, versions in self._file.items()}
        for entry in await self._api_entries():
            newest.setdefault(entry.tool.name, entry)  # rows come newest first
        return sorted(newest.values(), key=lambda e: (e.source != "file", e.tool.name))

    async def versions(self, name: str) -> list[Entry]:
        if name in self._file:
            return list(self._file[name])
        return await self._api_entries(name)

    async def get(self, ref: str) -> Entry:
        """The tool `ref` names: `name` (its newest version) or `name@version`."""
        name, version = parse_ref(ref)
        versions = self._file.get(name) or await self._api_entries(name, version)
        chosen = [e for e in versions if version is None or e.tool.version == version]
        if not chosen:
            raise ToolNotFound(f"no tool {ref!r}" + ("" if version is None else f" (versions: "
                               f"{', '.join(e.tool.version for e in versions) or 'none'})"))
        return chosen[-1] if name in self._file else chosen[0]

    async def _api_entries(self, name: str | None = None, version: str | None = None) -> list[Entry]:
        """Registered, not deleted, newest first."""
        from sqlmodel import select

        from core.models import ToolRegistration

        query = select(ToolRegistration).where(ToolRegistration.deleted_at.is_(None))  # type: ignore[union-attr]
        if name is not None:
            query = query.where(ToolRegistration.name == name)
        if version is not None:
            query = query.where(ToolRegistration.version == version)
        query = query.order_by(ToolRegistration.created_at.desc(), ToolRegistration.id.desc())  # type: ignore[attr-defined,union-attr]
        async with self.db.session() as session:
            rows = (await session.exec(query)).all()
        return [self._entry(row) for row in rows]

    def _entry(self, row: Any) -> Entry:
        tool = Tool.model_validate(row.definition)
        return Entry(tool, "api", unavailable_reason(tool, self.settings, os.environ),
                     row.created_at.isoformat(), row.created_by)

    # -- changing ---------------------------------------------------------------------------
    async def register(self, definition: Mapping[str, Any], created_by: str) -> tuple[Entry, bool]:
        """(the entry, whether it is new). ToolDefinitionError, ToolConflict when refused."""
        from sqlalchemy.dialects.postgresql import insert
        from sqlmodel import select

        from core.models import ToolRegistration

        tool, problems = parse_definition(dict(definition), self.settings)
        if tool is None:
            raise ToolDefinitionError(problems)
        if tool.name in self._file:
            raise ToolConflict(f"{tool.name} is defined by the tools file, which the API cannot override; "
                               "register it under another name")
        row = {"name": tool.name, "version": tool.version, "definition": tool.model_dump(mode="json", exclude_none=True),
               "etag": tool.etag, "created_by": created_by}
        async with self.db.session() as session:
            statement = insert(ToolRegistration).values(row).on_conflict_do_nothing(
                constraint="uq_tool_registrations_name_version").returning(ToolRegistration.id)
            created = (await (await session.connection()).execute(statement)).first() is not None
            existing = (await session.exec(select(ToolRegistration).where(
                ToolRegistration.name == tool.name, ToolRegistration.version == tool.version))).one()
            if existing.etag != tool.etag:
                raise ToolConflict(f"{tool.ref} is already registered with another definition (etag "
                                   f"{existing.etag}); a changed tool needs a new version")
            if existing.deleted_at is not None:  # the same definition again: it is back
                existing.deleted_at = None
                session.add(existing)
                created = True
            await session.commit()
            await session.refresh(existing)
        return self._entry(existing), created

    async def delete(self, ref: str) -> list[str]:
        """Delete `name` (every version) or `name@version` registered through the API."""
        from sqlmodel import select

        from core.models import ToolRegistration

        name, version = parse_ref(ref)
        if name in self._file:
            raise ToolConflict(f"{name} is defined by the tools file; remove it there")
        query = select(ToolRegistration).where(ToolRegistration.name == name,
                                               ToolRegistration.deleted_at.is_(None))  # type: ignore[union-attr]
        if version is not None:
            query = query.where(ToolRegistration.version == version)
        async with self.db.session() as session:
            rows = (await session.exec(query)).all()
            if not rows:
                raise ToolNotFound(f"no registered tool {ref!r}")
            now = datetime.now(UTC)
            for row in rows:
                row.deleted_at = now
                session.add(row)
            await session.commit()
        return [f"{row.name}@{row.version}" for row in rows]
