"""Alembic migrations, packaged so `core.migrate` can find them without an alembic.ini."""
