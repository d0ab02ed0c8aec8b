"""The one gateway to the database: every statement whisperd runs lives here.

On SQLite the engine runs in WAL mode with a busy timeout; pysqlite's own
implicit transactions are switched off and every transaction is begun
explicitly, writes with ``BEGIN IMMEDIATE`` so that a claim takes the write
lock before it reads (huey does the same). Claiming is one
``UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING``; on PostgreSQL the
sub-select gains ``FOR UPDATE SKIP LOCKED`` (SQLAlchemy silently drops that
clause on SQLite, where the write lock already serialises claims).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from sqlalchemy import Connection, case, create_engine, event, func, insert, select, update
from sqlalchemy.engine import Engine, RowMapping
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import IntegrityError, OperationalError

from daemon.config import sqlite_file
from daemon.errors import DatabaseError
from daemon.faults import MachineFault, database_fault
from daemon.jobs import Cause, Checkpoint, Interruption, Job, State
from daemon.queue.schema import ACTIVE, jobs, needs_upgrade, upgrade

log = logging.getLogger("whisperd.queue")

BUSY_TIMEOUT_MS = 30_000
KEEP_INTERRUPTIONS = 20  # the latest ones recorded on a job

_REQUEUED = {
    Cause.STOPPED: "whisperd stopped while working on this file; it was picked up again",
    Cause.WORKER_EXITED: "whisperd's worker ended while working on this file; it was picked up again",
    Cause.WORKER_DIED: "whisperd's worker crashed while working on this file; it is tried again on its own",
    Cause.KILLED: "whisperd's worker was killed from outside while working on this file; it was picked up again",
    Cause.LEASE_EXPIRED: "whisperd lost touch with the worker on this file; it was picked up again",
}


def _interruptions(raw: str | None) -> tuple[Interruption, ...]:
    return tuple(Interruption.from_dict(d) for d in json.loads(raw)) if raw else ()


def _job(row: RowMapping) -> Job:
    return Job(
        id=row["id"],
        folder=row["folder"],
        path=row["path"],
        rel=row["rel"],
        state=State(row["state"]),
        content_hash=row["content_hash"],
        size=row["size"] or 0,
        mtime=row["mtime"] or 0.0,
        attempts=row["attempts"] or 0,
        strikes=row["strikes"] or 0,
        progress=row["progress"] or 0.0,
        duration=row["duration"],
        error=row["error"],
        model=row["model"],
        device=row["device"],
        precision=row["precision"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        not_before=row["not_before"] or 0.0,
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        checkpoint=Checkpoint.from_json(row["checkpoint"]),
        outputs=tuple(json.loads(row["outputs"])) if row["outputs"] else (),
        destination=row["destination"],
        duplicate_of=row["duplicate_of"],
        suspect_until=row["suspect_until"],
        interruptions=_interruptions(row["interruptions"]),
    )


def _prepare_sqlite_file(path: Path) -> None:
    """Create the database file readable by the user alone, and move a corrupt one aside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return
    os.chmod(path, 0o600)
    try:
        con = sqlite3.connect(path)
        try:
            ok = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
        if ok and ok[0] == "ok":
            return
        reason = str(ok[0]) if ok else "no answer"
    except sqlite3.DatabaseError as exc:
        reason = str(exc)
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 2
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    log.error(
        "the queue database %s was damaged (%s); it was moved to %s and a new one is built by rescanning the inboxes",
        path,
        reason,
        aside,
        extra={"action": "queue.corrupt"},
    )
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _unavailable(exc: OperationalError) -> MachineFault:
    """A database that is locked, full or unreachable: the machine's fault, never a file's."""
    text = str(getattr(exc, "orig", None) or exc)
    if "locked" in text or "busy" in text:
        detail = "another program has kept it locked"
    elif "full" in text:
        detail = "the disk holding it is full"
    else:
        detail = text
    return MachineFault(database_fault(detail))


class Queue:
    """All reads and writes of jobs. Returns frozen Job values, never rows."""

    def __init__(self, url: str, *, busy_timeout: float = BUSY_TIMEOUT_MS / 1000) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.busy_timeout = busy_timeout
        db_file = sqlite_file(url)
        if db_file is not None:
            _prepare_sqlite_file(Path(db_file))
        try:
            self.engine: Engine = create_engine(url, connect_args={"timeout": busy_timeout} if self.is_sqlite else {})
        except Exception as exc:  # a bad URL or a missing driver
            raise DatabaseError(f"the queue database {url!r} could not be opened: {exc}") from exc
        if self.is_sqlite:
            event.listen(self.engine, "connect", self._on_connect)
            event.listen(self.engine, "begin", self._on_begin)
        try:
            added: list[str] = []
            with self._read() as conn:
                ready = not needs_upgrade(conn)
            if not ready:  # a read needs no write lock: `whisperd status` works while another program holds it
                with self._write() as conn:
                    added = upgrade(conn)
        except SADatabaseError as exc:
            raise DatabaseError(f"the queue database {url!r} could not be opened: {exc.orig}") from exc
        if added:
            log.info("the queue database gained the columns %s", ", ".join(added), extra={"action": "queue.upgrade"})

    # -- connection plumbing -------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={round(self.busy_timeout * 1000)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @staticmethod
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("whisperd_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(whisperd_write=True)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise _unavailable(exc) from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise _unavailable(exc) from exc

    def writable(self, timeout: float = 1.0) -> bool:
        """Whether a write could begin now, waiting at most ``timeout`` seconds for a lock (on its
        own connection, so it never holds up the others): how a paused daemon looks again."""
        if not self.is_sqlite or not self.url.startswith("sqlite:///") or self.url == "sqlite:///:memory:":
            try:
                with self._write():
                    return True
            except MachineFault:
                return False
        try:
            con = sqlite3.connect(self.url[len("sqlite:///"):], timeout=timeout, isolation_level=None)
        except sqlite3.Error:
            return False
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return True
        except sqlite3.Error:
            return False
        finally:
            con.close()

    def close(self) -> None:
        self.engine.dispose()

    # -- reads ---------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return _job(row) if row else None

    def all(self) -> list[Job]:
        with self._read() as conn:
            rows = conn.execute(select(jobs).order_by(jobs.c.id)).mappings().all()
        return [_job(r) for r in rows]

    def done_with_hash(self, content_hash: str, exclude_id: int | None = None) -> Job | None:
        """The first finished transcription of this content, if any (for duplicates)."""
        q = select(jobs).where(
            jobs.c.content_hash == content_hash, jobs.c.state == State.DONE.value, jobs.c.duplicate_of.is_(None)
        )
        if exclude_id is not None:
            q = q.where(jobs.c.id != exclude_id)
        with self._read() as conn:
            row = conn.execute(q.order_by(jobs.c.id).limit(1)).mappings().first()
        return _job(row) if row else None

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        out = {s.value: 0 for s in State}
        out.update({state: n for state, n in rows})
        return out

    def pending(self) -> int:
        """Jobs that still need work (queued or running)."""
        with self._read() as conn:
            return conn.execute(select(func.count()).select_from(jobs).where(jobs.c.state.in_(ACTIVE))).scalar_one()

    def claimable(self, now: float, folders: Sequence[int] | None = None) -> int:
        """Queued jobs whose backoff has passed."""
        q = select(func.count()).select_from(jobs).where(jobs.c.state == State.QUEUED.value, jobs.c.not_before <= now)
        if folders is not None:
            q = q.where(jobs.c.folder.in_(list(folders)))
        with self._read() as conn:
            return conn.execute(q).scalar_one()

    def running_owners(self) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                select(jobs.c.lease_owner).where(jobs.c.state == State.RUNNING.value).distinct()
            ).scalars().all()
        return [r for r in rows if r]

    # -- writes --------------------------------------------------------------

    def enqueue(self, *, folder: int, path: str, rel: str, size: int, mtime: float, content_hash: str | None, now: float) -> Job | None:
        """Record a settled file. Returns the new job, or None when it is already queued unchanged.

        A queued file whose content changed since is evaluated afresh: its saved
        progress is dropped.
        """
        with self._write() as conn:
            row = conn.execute(select(jobs).where(jobs.c.path == path, jobs.c.state.in_(ACTIVE))).mappings().first()
            if row is not None:
                if row["content_hash"] == content_hash and row["size"] == size:
                    return None
                if row["state"] == State.QUEUED.value:
                    conn.execute(
                        update(jobs)
                        .where(jobs.c.id == row["id"])
                        .values(content_hash=content_hash, size=size, mtime=mtime, checkpoint=None, offset=0.0, progress=0.0, claim_offset=0.0, duration=None)
                    )
                return None
            try:
                new = conn.execute(
                    insert(jobs)
                    .values(
                        folder=folder,
                        path=path,
                        rel=rel,
                        state=State.QUEUED.value,
                        content_hash=content_hash,
                        size=size,
                        mtime=mtime,
                        created_at=now,
                        not_before=0.0,
                    )
                    .returning(*jobs.c)
                ).mappings().one()
            except IntegrityError:
                return None
        return _job(new)

    def claim(
        self, owner: str, *, now: float, lease_seconds: float, folders: Sequence[int] | None = None,
        copies_wait: Sequence[int] | None = None,
    ) -> Job | None:
        """Atomically take the oldest claimable job, or None. A copy of a recording that is
        being transcribed waits for it, so that it finds the result (duplicates: skip):
        in the folders ``copies_wait`` lists, or in all when it is None.

        A suspect (a job whose worker died while it held others too) runs alone: only a worker
        that holds nothing takes one, and takes nothing beside it; and while one waits, a worker
        that holds jobs takes no more, so that it soon holds nothing. That a worker dies again
        with a suspect alone is then evidence against that file, and against no other."""
        busy = jobs.alias("busy")
        same_content_running = (
            select(busy.c.id)
            .where(busy.c.state == State.RUNNING.value, busy.c.content_hash == jobs.c.content_hash)
            .exists()
        )
        free = jobs.c.content_hash.is_(None) | ~same_content_running
        if copies_wait is not None:
            free = free | jobs.c.folder.not_in(list(copies_wait))
        pick = select(jobs.c.id).where(jobs.c.state == State.QUEUED.value, jobs.c.not_before <= now, free)
        if folders is not None:
            pick = pick.where(jobs.c.folder.in_(list(folders)))
        mine = jobs.alias("mine")
        held = (mine.c.state == State.RUNNING.value) & (mine.c.lease_owner == owner)
        holding = select(mine.c.id).where(held).exists()
        holding_suspect = select(mine.c.id).where(held, mine.c.suspect_until.is_not(None)).exists()
        waiting = jobs.alias("waiting")
        suspect_waits = select(waiting.c.id).where(
            waiting.c.state == State.QUEUED.value, waiting.c.not_before <= now, waiting.c.suspect_until.is_not(None),
            *([waiting.c.folder.in_(list(folders))] if folders is not None else []),
        ).exists()
        pick = pick.where(~holding_suspect, ~holding | ((jobs.c.suspect_until.is_(None)) & ~suspect_waits))
        pick = pick.order_by(jobs.c.created_at, jobs.c.id).limit(1)
        if not self.is_sqlite:
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(jobs)
            .where(jobs.c.id == pick.scalar_subquery(), jobs.c.state == State.QUEUED.value)
            .values(
                state=State.RUNNING.value,
                lease_owner=owner,
                lease_expires=now + lease_seconds,
                started_at=func.coalesce(jobs.c.started_at, now),
                attempts=jobs.c.attempts + 1,
                claim_offset=jobs.c.offset,
            )
            .returning(*jobs.c)
        )
        with self._write() as conn:
            row = conn.execute(stmt).mappings().first()
        return _job(row) if row else None

    def _owned(self, job_id: int, owner: str) -> Any:
        return (jobs.c.id == job_id) & (jobs.c.lease_owner == owner) & (jobs.c.state == State.RUNNING.value)

    def heartbeat(self, job_id: int, owner: str, *, now: float, lease_seconds: float) -> bool:
        with self._write() as conn:
            res = conn.execute(update(jobs).where(self._owned(job_id, owner)).values(lease_expires=now + lease_seconds))
        return res.rowcount == 1

    def save_checkpoint(
        self, job_id: int, owner: str, checkpoint: Checkpoint, *, duration: float | None, now: float, lease_seconds: float
    ) -> bool:
        """Persist the chunks done so far; False when this worker no longer holds the job."""
        progress = min(1.0, checkpoint.offset / duration) if duration else 0.0
        with self._write() as conn:
            res = conn.execute(
                update(jobs)
                .where(self._owned(job_id, owner))
                .values(
                    checkpoint=checkpoint.to_json(),
                    offset=checkpoint.offset,
                    progress=progress,
                    lease_expires=now + lease_seconds,
                    # past the place where a worker died holding it, alone: no longer a suspect
                    suspect_until=case((jobs.c.suspect_until <= checkpoint.offset, None), else_=jobs.c.suspect_until),
                    # strikes count tries that got no further: one that did starts the count again
                    strikes=case((jobs.c.offset < checkpoint.offset, 0), else_=jobs.c.strikes),
                )
            )
        return res.rowcount == 1

    def annotate(self, job_id: int, owner: str, **values: Any) -> bool:
        """Record facts learnt while running: duration, model, device, precision."""
        allowed = {"duration", "model", "device", "precision"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"cannot annotate {sorted(unknown)}")
        with self._write() as conn:
            res = conn.execute(update(jobs).where(self._owned(job_id, owner)).values(**values))
        return res.rowcount == 1

    def plan(self, job_id: int, owner: str, *, outputs: Sequence[str] | None = None, destination: str | None = None) -> bool:
        """Remember the names chosen for outputs and the original, before anything is written under them."""
        values: dict[str, Any] = {}
        if outputs is not None:
            values["outputs"] = json.dumps(list(outputs), ensure_ascii=False)
        if destination is not None:
            values["destination"] = destination
        with self._write() as conn:
            res = conn.execute(update(jobs).where(self._owned(job_id, owner)).values(**values))
        return res.rowcount == 1

    def finish(
        self, job_id: int, owner: str, state: State, *, now: float, error: str | None = None, duplicate_of: int | None = None
    ) -> bool:
        if not state.finished:
            raise ValueError(f"finish() takes done or failed, not {state.value}")
        values: dict[str, Any] = dict(state=state.value, finished_at=now, error=error, lease_owner=None, lease_expires=None)
        if state is State.DONE:
            values["progress"] = 1.0
        if duplicate_of is not None:
            values["duplicate_of"] = duplicate_of
        with self._write() as conn:
            res = conn.execute(update(jobs).where(self._owned(job_id, owner)).values(**values))
        return res.rowcount == 1

    def retry_later(self, job_id: int, owner: str, *, error: str, not_before: float, strike: bool = True) -> bool:
        """Give a job back to the queue after a transient error."""
        with self._write() as conn:
            res = conn.execute(
                update(jobs)
                .where(self._owned(job_id, owner))
                .values(
                    state=State.QUEUED.value,
                    error=error,
                    not_before=not_before,
                    lease_owner=None,
                    lease_expires=None,
                    strikes=jobs.c.strikes + (1 if strike else 0),
                )
            )
        return res.rowcount == 1

    def release(self, job_id: int, owner: str) -> bool:
        """Hand a job back untouched (shutdown or a thermal pause); its checkpoint stays."""
        with self._write() as conn:
            res = conn.execute(
                update(jobs)
                .where(self._owned(job_id, owner))
                .values(state=State.QUEUED.value, lease_owner=None, lease_expires=None, attempts=jobs.c.attempts - 1)
            )
        return res.rowcount == 1

    def recover(self, *, now: float, owners_alive: Sequence[str] = ()) -> list[Job]:
        """At start-up: the jobs a previous whisperd left running go back to the queue. Its end
        (a power cut, a force quit, launchd) is not the files' fault: no strike."""
        cond = jobs.c.state == State.RUNNING.value
        if owners_alive:
            cond = cond & jobs.c.lease_owner.not_in(list(owners_alive))
        with self._write() as conn:
            back = self._requeue(conn, cond, now=now, cause=Cause.STOPPED)
        if back:
            log.warning(
                "whisperd ended last time without saving its place (a power cut, a force quit?) while working on %d "
                "file(s); they go back to the queue with their progress kept, and it does not count against them",
                len(back), extra={"action": "queue.recover"},
            )
        return back

    def reap(self, *, now: float, owners_alive: Sequence[str] | None = None) -> list[Job]:
        """Jobs whose lease expired go back to the queue (but not those of ``owners_alive``), with
        no strike: that nobody renewed a lease says nothing about the file."""
        cond = (jobs.c.state == State.RUNNING.value) & (jobs.c.lease_expires < now)
        if owners_alive:
            cond = cond & jobs.c.lease_owner.not_in(list(owners_alive))
        with self._write() as conn:
            back = self._requeue(conn, cond, now=now, cause=Cause.LEASE_EXPIRED)
        for job in back:
            log.warning("job %s went back to the queue: its lease expired", job.id, extra={"action": "job.reaped", "job": job.id})
        return back

    def abandoned(
        self, owner: str, *, now: float, died: bool, detail: str = "", reached: dict[int, tuple[float, float]] | None = None,
        killed: bool = False,
    ) -> list[Job]:
        """The jobs a worker process held when it ended go back to the queue.

        ``died``: it ended abnormally while whisperd lived, which may be the file's doing, or not
        (a kill from outside, the out-of-memory killer taking the largest process). Such a death
        alone is never a strike: each file the worker held becomes a suspect and runs alone
        (``claim``), a chunk at a time, until it gets past the place where the worker was
        (``reached``: the stretch of each file the worker had taken into the model). Only a
        worker that dies with a suspect alone, before that run saved any progress, is evidence
        against the file: a strike, counted until the file gets further (``save_checkpoint``).
        A file that kills the worker by itself dies in the same chunk every time and collects its
        strikes; a good file killed at random moments almost always gets a chunk further."""
        cond = (jobs.c.state == State.RUNNING.value) & (jobs.c.lease_owner == owner)
        cause = Cause.KILLED if killed else Cause.WORKER_DIED if died else Cause.WORKER_EXITED
        with self._write() as conn:
            return self._requeue(conn, cond, now=now, cause=cause, detail=detail, reached=reached or {},
                                 evidence=died and not killed)

    def _requeue(
        self, conn: Connection, cond: Any, *, now: float, cause: Cause, detail: str = "",
        reached: dict[int, tuple[float, float]] | None = None, evidence: bool = False,
    ) -> list[Job]:
        rows = conn.execute(select(jobs).where(cond)).mappings().all()
        back = []
        for row in rows:
            offset = row["offset"] or 0.0
            where = (reached or {}).get(row["id"])
            # alone (a suspect runs alone), a chunk at a time, and no further than when claimed
            strike = (evidence and len(rows) == 1 and row["suspect_until"] is not None
                      and offset <= (row["claim_offset"] or 0.0))
            record = Interruption(cause, now, offset, where, detail, strike)
            history = list(_interruptions(row["interruptions"]))[-(KEEP_INTERRUPTIONS - 1):] + [record]
            values: dict[str, Any] = dict(
                state=State.QUEUED.value, lease_owner=None, lease_expires=None, error=_REQUEUED[cause],
                interruptions=json.dumps([i.to_dict() for i in history]),
                strikes=jobs.c.strikes + (1 if strike else 0),
            )
            if evidence:
                # a stretch the worker reached, else any progress, clears the suspicion
                values["suspect_until"] = max(row["suspect_until"] or 0.0, where[1] if where else offset + 0.001)
            new = conn.execute(
                update(jobs).where(jobs.c.id == row["id"], cond).values(**values).returning(*jobs.c)
            ).mappings().first()
            if new is not None:
                back.append(_job(new))
        return back
