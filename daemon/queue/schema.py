"""The jobs table. Only daemon.queue imports SQLAlchemy."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text, text

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
