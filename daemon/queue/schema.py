"""The jobs table. Only daemon.queue imports SQLAlchemy.

A column added after a release is nullable or has a ``server_default``, so that ``upgrade`` can add
it to a database an older whisperd made (``create_all`` makes missing tables, never missing columns).
"""

from __future__ import annotations

from sqlalchemy import Column, Connection, Float, Index, Integer, MetaData, String, Table, Text, inspect, text
from sqlalchemy.schema import CreateColumn

metadata = MetaData()

ACTIVE = ("queued", "running")

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("folder", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("rel", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("content_hash", String(64), index=True),
    Column("size", Integer, nullable=False, default=0),
    Column("mtime", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),  # times claimed
    Column("strikes", Integer, nullable=False, default=0),  # failed tries that made no progress
    Column("progress", Float, nullable=False, default=0.0),
    Column("duration", Float),
    Column("error", Text),
    Column("model", Text),
    Column("device", String(16)),
    Column("precision", String(16)),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("not_before", Float, nullable=False, default=0.0),
    Column("lease_owner", Text),
    Column("lease_expires", Float),
    Column("offset", Float, nullable=False, default=0.0),  # seconds of audio already transcribed
    Column("claim_offset", Float, nullable=False, default=0.0),  # offset when last claimed
    Column("checkpoint", Text),  # JSON: segments of the chunks already done
    Column("outputs", Text),  # JSON list: final output paths, chosen once
    Column("destination", Text),  # where the original goes, chosen once
    Column("duplicate_of", Integer),
    # A worker died holding this job: it runs alone until its offset passes this (see Queue.claim).
    Column("suspect_until", Float),
    Column("interruptions", Text),  # JSON list: each time the job was taken from its worker, and why
    # At most one live job per path: a file is queued once.
    Index(
        "one_active_job_per_path",
        "path",
        unique=True,
        sqlite_where=text("state IN ('queued', 'running')"),
        postgresql_where=text("state IN ('queued', 'running')"),
    ),
    Index("claim_order", "state", "not_before", "created_at"),
)


def needs_upgrade(conn: Connection) -> bool:
    """Whether the tables or some of their columns are missing (a new or an older database)."""
    inspector = inspect(conn)
    if not inspector.has_table(jobs.name):
        return True
    have = {c["name"] for c in inspector.get_columns(jobs.name)}
    return any(c.name not in have for c in jobs.columns)


def upgrade(conn: Connection) -> list[str]:
    """Make the tables, and add the columns a database from an older whisperd lacks. Returns
    the names of the columns added."""
    metadata.create_all(conn)
    have = {c["name"] for c in inspect(conn).get_columns(jobs.name)}
    added = []
    for column in jobs.columns:
        if column.name not in have:
            ddl = CreateColumn(column).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {jobs.name} ADD COLUMN {ddl}")
            added.append(column.name)
    return added
