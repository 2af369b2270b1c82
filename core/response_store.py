"""Stored responses: what `previous_response_id` continues and GET /v1/responses/{id} reads.

A stored response is its Response object and the conversation it answered: every input
item of its chain, flattened (the previous response's conversation and output, then its
own input). Continuing one is therefore one read whatever the chain's length, and an
earlier response expiring never breaks a later one. The instructions are not part of
it: as in OpenAI's API, they are not carried over, a continuation brings its own.

Where it lives:
- Redis, when configured: `orchesity:response:{id}`, one JSON value that expires after
  RESPONSES_TTL_SECONDS. Postgres is not written.
- Postgres (`stored_responses`, with `expires_at`; the cron tick deletes expired rows)
  when Redis is off, or could not take the write.
With Redis, storing costs the request one more round trip (a SET once the answer is in)
and continuing one more (a GET before the call). Reads try Redis, then Postgres on a
miss (a response written while Redis was down). A
Redis that cannot answer and a Postgres without the response is a KVUnavailable, not a
"not found": the response may well exist.

Every stored response belongs to its caller (a key's id, "user:<sub>", or "open"):
for anyone else it does not exist, and they are told exactly what they would be told
for an id never issued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from core import fastjson
from core.kv import KEY_PREFIX, KV, KVError, KVUnavailable

if TYPE_CHECKING:
    from core.db import Database


@dataclass(slots=True)
class Stored:
    owner: str
    conversation: list[dict[str, Any]]  # the items it answered, instructions apart
    response: dict[str, Any]            # the Response object

    @property
    def continued(self) -> list[dict[str, Any]]:
        """What a response continuing this one is the sequel of: its conversation and output."""
        return self.conversation + list(self.response.get("output") or ())


def key(response_id: str) -> str:
    return f"{KEY_PREFIX}response:{response_id}"


async def save(kv: KV | None, db: Database, stored: Stored, ttl: int) -> str:
    """Keep `stored` for `ttl` seconds; returns where: "redis" or "postgres"."""
    response_id = stored.response["id"]
    if kv is not None:
        value = fastjson.dumps({"owner": stored.owner, "conversation": stored.conversation,
                                "response": stored.response}).decode()
        try:
            await kv.execute("SET", key(response_id), value, "EX", ttl)
            return "redis"
        except KVError:  # unreachable or refusing: Postgres keeps it instead
            pass
    from core.models import StoredResponse

    async with db.session() as session:
        session.add(StoredResponse(id=response_id, owner=stored.owner, conversation=stored.conversation,
                                   response=stored.response,
                                   expires_at=datetime.now(UTC) + timedelta(seconds=ttl)))
        await session.commit()
    return "postgres"


async def load(kv: KV | None, db: Database, response_id: str, owner: str) -> Stored | None:
    """The response `response_id` if it is `owner`'s and has not expired, else None."""
    redis_down: KVError | None = None
    if kv is not None:
        try:
            raw = await kv.execute("GET", key(response_id))
        except KVError as exc:
            redis_down = exc
        else:
            if raw is not None:
                values = fastjson.loads(raw)
                stored = Stored(values["owner"], values["conversation"], values["response"])
                return stored if stored.owner == owner else None
    from core.models import StoredResponse

    async with db.session() as session:
        row = await session.get(StoredResponse, response_id)
    if row is not None and row.owner == owner and row.expires_at > datetime.now(UTC):
        return Stored(row.owner, row.conversation, row.response)
    if redis_down is not None:
        raise redis_down if isinstance(redis_down, KVUnavailable) else KVUnavailable(str(redis_down))
    return None


async def delete(kv: KV | None, db: Database, response_id: str, owner: str) -> bool:
    """Delete `owner`'s response `response_id`; False when there is none to delete."""
    if await load(kv, db, response_id, owner) is None:
        return False
    if kv is not None:
        await kv.delete(key(response_id))
    from sqlalchemy import delete as sql_delete

    from core.models import StoredResponse

    async with db.session() as session:
        await session.exec(sql_delete(StoredResponse).where(StoredResponse.id == response_id))  # type: ignore[arg-type]
        await session.commit()
    return True


async def purge(db: Database) -> int:
    """Delete the Postgres rows past their expiry; how many went (Redis expires its own)."""
    from sqlalchemy import delete as sql_delete

    from core.models import StoredResponse

    async with db.session() as session:
        result = await session.exec(sql_delete(StoredResponse).where(  # type: ignore[call-overload]
            StoredResponse.expires_at <= datetime.now(UTC)))  # type: ignore[arg-type]
        await session.commit()
    return result.rowcount or 0
