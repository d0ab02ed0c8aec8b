"""The only package that imports SQLAlchemy: schema, engine setup, claim/finish/lease."""

from daemon.queue.store import Queue

__all__ = ["Queue"]
