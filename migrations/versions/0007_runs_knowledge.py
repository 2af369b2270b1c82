"""runs knowledge base: goals, judge and feedback scores, embeddings of any dimension

The embedding column loses its fixed dimension (vector(384) -> vector), keeping every
vector it holds, and each vector records the model that made it. The HNSW index is per
embedding model, on `embedding::vector(d)` for that model's rows (pgvector indexes one
dimension; core/runs/knowledge.py creates it when it first stores that model's vectors):
a change of embedding model loses no row, and the runs embedded by the old model are
embedded again by the new one, in the background.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_text = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.execute("ALTER TABLE runs ALTER COLUMN embedding TYPE vector")
    op.add_column("runs", sa.Column("embedding_model", _text(), nullable=True))
    op.add_column("runs", sa.Column("goal", _text(), nullable=True))
    op.add_column("runs", sa.Column("judge_score", sa.Float(), nullable=True))
    op.add_column("runs", sa.Column("feedback_rating", sa.Integer(), nullable=True))
    op.execute("UPDATE runs SET embedding_model = 'unknown' WHERE embedding IS NOT NULL")
    # the runs the knowledge base has still to learn (succeeded, not embedded by the model)
    op.create_index("ix_runs_learned", "runs", ["embedding_model", "finished_at"],
                    postgresql_where=sa.text("status = 'succeeded'"))


def downgrade() -> None:
    op.drop_index("ix_runs_learned", table_name="runs")
    for column in ("feedback_rating", "judge_score", "goal", "embedding_model"):
        op.drop_column("runs", column)
    # vectors of another dimension cannot go back into vector(384): they are dropped
    op.execute("UPDATE runs SET embedding = NULL WHERE vector_dims(embedding) <> 384")
    op.execute("ALTER TABLE runs ALTER COLUMN embedding TYPE vector(384)")
