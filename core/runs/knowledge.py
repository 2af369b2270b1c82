"""The knowledge base of runs: what succeeded, embedded, found again by meaning.

Each succeeded run's goal, pipeline and outcome (`run_text`) is embedded through the
gateway (core/embeddings.py: the DWA routes it, the cache serves it, the request log
records it) into the run's `embedding`, with the model that made it in
`embedding_model`. `learn` does that in batches, off the run's own path: the worker
when idle, the cron sweep, and a similar-runs search before it looks.

The column has no fixed dimension. Each embedding model gets its own HNSW index (cosine)
on `embedding::vector(d)` over its rows, made the first time its vectors are stored, and
searches use that expression, so a change of EMBEDDING_MODEL loses no row: a search
embeds its query with the new model, which tells `learn` to embed again the runs an
older model embedded, a batch per search or sweep; until then they are not found (a
search compares vectors of one model only). Set EMBEDDING_MODEL to one deployment (or
to deployments of one model): with `auto`, deployments of different models would take
turns and make the runs' vectors incomparable.

Ranking: `similar` takes the nearest runs by cosine similarity and orders them by
similarity x (0.5 + quality / 2), quality being the run's quality score (0..1; 0.5 while
unknown). The quality score is the evaluator's score, the feedback's rating mapped to
0..1 ((rating - 1) / 4), or their mean when a run has both.

KNOWLEDGE_BATCH=0 turns it off: no run's content goes to an embedding model.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core import fastjson
from core.db import unbounded
from core.outage import Outage

if TYPE_CHECKING:
    from core.runs.submit import Caller
    from core.services import Services

log = logging.getLogger("orchesity.runs")

UNKNOWN_QUALITY = 0.5
CANDIDATES = 4  # nearest runs fetched per result wanted, then ranked with their quality
OUTCOME_CHARS = 600  # of the run's output, in the text embedded

# Not embedded yet, or (when the current model is known) embedded by another model.
_UNLEARNED = """
SELECT id, goal, pipeline_name, pipeline, inputs, result FROM runs
WHERE status = 'succeeded' AND (embedding_model IS NULL OR embedding_model <> CAST(:model AS text))
ORDER BY finished_at DESC LIMIT :limit"""

_NEAREST = """
SELECT id, goal, pipeline_name, pipeline, quality_score, judge_score, feedback_rating, feedback, finished_at,
       1 - (embedding::vector({dim}) <=> CAST(:q AS vector({dim}))) AS similarity
FROM runs WHERE status = 'succeeded' AND embedding_model = :model AND (CAST(:owner AS text) IS NULL OR caller = :owner)
ORDER BY embedding::vector({dim}) <=> CAST(:q AS vector({dim})) LIMIT :limit"""

_FEEDBACK = """
UPDATE runs SET feedback_rating = :rating, feedback = :comment,
  quality_score = CASE WHEN judge_score IS NULL THEN (:rating - 1) / 4.0
                       ELSE (judge_score + (:rating - 1) / 4.0) / 2 END
WHERE id = :run RETURNING quality_score, judge_score"""


class KnowledgeUnavailable(RuntimeError):
    """The embedding model could not be reached: no similar runs can be looked up now."""


@dataclass(frozen=True)
class Similar:
    id: uuid.UUID
    goal: str | None
    pipeline_name: str | None
    pipeline: dict[str, Any]
    similarity: float
    quality: float | None
    judge_score: float | None
    rating: int | None
    feedback: str | None
    finished_at: Any

    @property
    def rank(self) -> float:
        quality = UNKNOWN_QUALITY if self.quality is None else self.quality
        return self.similarity * (0.5 + quality / 2)

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "goal": self.goal, "pipeline_name": self.pipeline_name,
                "pipeline": self.pipeline, "score": round(self.rank, 6), "similarity": round(self.similarity, 6),
                "quality_score": self.quality, "judge_score": self.judge_score,
                "feedback": None if self.rating is None else {"rating": self.rating, "comment": self.feedback},
                "finished_at": self.finished_at.isoformat() if self.finished_at else None}


def run_text(goal: str | None, pipeline_name: str | None, pipeline: dict[str, Any], inputs: dict[str, Any],
             result: dict[str, Any] | None) -> str:
    """What is embedded of a run: its goal (or inputs), its steps, its outcome."""
    steps = ", ".join(f"{s['id']} ({s['kind']}{': ' + s['tool'] if s.get('tool') else ''})"
                      for s in pipeline.get("steps", []))
    purpose = goal or fastjson.dumps(inputs).decode()[:OUTCOME_CHARS]
    output = (result or {}).get("output")
    outcome = output if isinstance(output, str) else fastjson.dumps(output).decode()
    return (f"Goal: {purpose}\nPipeline{' ' + pipeline_name if pipeline_name else ''}: {steps}\n"
            f"Outcome: {outcome[:OUTCOME_CHARS]}")


async def _embed(svc: Services, texts: list[str], caller: Caller | None = None) -> Any:
    """The texts embedded through the gateway, logged under and counted against `caller`'s
    key when there is one (the knowledge base's own embeddings are the deployment's)."""
    from core.embeddings import EmbeddingError, embed_texts
    from core.limits import LimitExceeded
    from core.orchestrator import UnknownProvider

    try:
        if caller is None:
            return await embed_texts(svc.orchestrator, texts)
        return await embed_texts(svc.orchestrator, texts, caller=caller.id, tenant=caller.tenant,
                                 limits=caller.limits)
    except (EmbeddingError, UnknownProvider, LimitExceeded) as exc:
        raise KnowledgeUnavailable(str(exc)) from None


_indexed: set[tuple[str, int]] = set()  # (model, dimension) whose index this process has seen made


async def _ensure_index(svc: Services, model: str, dim: int) -> None:
    """The HNSW index of `model`'s vectors, made (concurrently: writes go on) if missing."""
    if (model, dim) in _indexed:
        return
    name = "ix_runs_embedding_" + hashlib.sha256(f"{model}:{dim}".encode()).hexdigest()[:12]
    literal = "'" + model.replace("'", "''") + "'"
    async with svc.db.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        from sqlalchemy import text

        valid = await conn.scalar(text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
                                  {"n": name})
        if valid is False:  # a build that was interrupted leaves an invalid index behind
            await conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        if not valid:
            with unbounded():  # minutes, on a large table: no statement deadline
                await conn.execute(text(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON runs USING hnsw "
                    f"((embedding::vector({dim})) vector_cosine_ops) WHERE embedding_model = {literal}"))
    _indexed.add((model, dim))


async def learn(svc: Services, model: str | None = None, limit: int | None = None) -> int:
    """Embed up to `limit` succeeded runs not embedded yet, or embedded by another model
    than `model` (the one a search just used); how many. KnowledgeUnavailable when the
    embedding model cannot be reached."""
    from sqlalchemy import text

    if not svc.settings.KNOWLEDGE_BATCH:
        return 0
    async with svc.db.engine.connect() as conn:
        rows = (await conn.execute(text(_UNLEARNED), {"model": model,
                                                       "limit": limit or svc.settings.KNOWLEDGE_BATCH})).all()
    if not rows:
        return 0
    embedded = await _embed(svc, [run_text(r.goal, r.pipeline_name, r.pipeline, r.inputs, r.result) for r in rows])
    await _ensure_index(svc, embedded.model, len(embedded.vectors[0]))
    async with svc.db.engine.begin() as conn:
        await conn.execute(text("UPDATE runs SET embedding = CAST(:v AS vector), embedding_model = :m WHERE id = :id"),
                           [{"id": r.id, "v": str(v), "m": embedded.model} for r, v in zip(rows, embedded.vectors)])
    return len(rows)


_learning = Outage("the knowledge base's embedding of finished runs", log)  # logged once per outage


async def learn_quietly(svc: Services, model: str | None = None) -> int:
    """`learn`, with a failure logged (once, until it works again) rather than raised:
    the idle worker, the sweeps and the searches call it."""
    try:
        learnt = await learn(svc, model)
    except Exception as exc:  # noqa: BLE001 - the next sweep tries again
        _learning.failed(exc)
        return 0
    _learning.recovered()
    return learnt


async def similar(svc: Services, query: str, *, limit: int, owned_by: str | None,
                  caller: Caller | None = None) -> list[Similar]:
    """The succeeded runs (of `owned_by`, or everyone's when None) most like `query`, best
    first; the query's embedding counts against `caller`'s key."""
    from sqlalchemy import text

    if not svc.settings.KNOWLEDGE_BATCH:
        raise KnowledgeUnavailable("the knowledge base is off (KNOWLEDGE_BATCH=0)")
    embedded = await _embed(svc, [query], caller)
    await learn_quietly(svc, embedded.model)
    vector = embedded.vectors[0]
    async with svc.db.engine.connect() as conn:
        rows = (await conn.execute(text(_NEAREST.format(dim=len(vector))),
                                   {"q": str(vector), "model": embedded.model, "owner": owned_by,
                                    "limit": limit * CANDIDATES})).all()
    found = [Similar(r.id, r.goal, r.pipeline_name, r.pipeline, float(r.similarity), r.quality_score, r.judge_score,
                     r.feedback_rating, r.feedback, r.finished_at) for r in rows]
    return sorted(found, key=lambda s: s.rank, reverse=True)[:limit]


async def feedback(svc: Services, run_id: uuid.UUID, rating: int, comment: str | None) -> dict[str, Any]:
    """Store a run's feedback (the latest replaces the one before); its quality score after."""
    from sqlalchemy import text

    async with svc.db.engine.begin() as conn:
        row = (await conn.execute(text(_FEEDBACK), {"run": run_id, "rating": rating, "comment": comment})).first()
    assert row is not None  # the caller found the run
    return {"id": str(run_id), "rating": rating, "comment": comment, "quality_score": row.quality_score,
            "judge_score": row.judge_score}
