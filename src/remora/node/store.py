"""The node's embedded store: desired and observed state in one SQLite file.

Events (core/v1 Event objects the controllers and kubelet record, remora.node.events)
are kept here too, as kube-apiserver keeps them in etcd beside the objects they are
about: they outlive those objects and a restart of the daemon, for their TTL.

An object's metadata.managedFields (server-side apply's field ownership, written by the
Kubernetes API, remora.kubeapi) are kept here too, by the object's kind, namespace and
name with the uid of the object they describe: kube-apiserver stores them in the object in
etcd, so they outlive a restart of the daemon as the object does, and go with it.

Desired state is the objects users applied (Namespace, Deployment, Service, bare Pod) as
their Kubernetes JSON. Observed state is what the daemon made of them: pods (with the
spec after admission, node, IP and namespace), their containers (PID, start time, restart
count) and allocated addresses. Everything `down` must remove is findable from here.

One connection per thread (sqlite3 objects are not shared across threads); WAL mode so the
API thread reads while the reconciler writes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
  kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
  body TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL,
  PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS pods (
  uid TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL,
  owner_kind TEXT NOT NULL DEFAULT '', owner_name TEXT NOT NULL DEFAULT '',
  template_hash TEXT NOT NULL DEFAULT '', node INTEGER NOT NULL, ip TEXT NOT NULL DEFAULT '',
  netns TEXT NOT NULL, body TEXT NOT NULL, phase TEXT NOT NULL DEFAULT 'Pending',
  message TEXT NOT NULL DEFAULT '', deleting INTEGER NOT NULL DEFAULT 0,
  created REAL NOT NULL, UNIQUE (namespace, name));
CREATE TABLE IF NOT EXISTS containers (
  pod_uid TEXT NOT NULL, name TEXT NOT NULL, init INTEGER NOT NULL DEFAULT 0,
  pid INTEGER NOT NULL DEFAULT 0, start_ticks INTEGER NOT NULL DEFAULT 0,
  cmdline TEXT NOT NULL DEFAULT '[]', restarts INTEGER NOT NULL DEFAULT 0,
  state TEXT NOT NULL DEFAULT 'Waiting', reason TEXT NOT NULL DEFAULT 'ContainerCreating',
  exit_code INTEGER, started REAL NOT NULL DEFAULT 0, ready INTEGER NOT NULL DEFAULT 0,
  finished REAL NOT NULL DEFAULT 0, last_state TEXT NOT NULL DEFAULT '{}',
  startup_done INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (pod_uid, name));
CREATE TABLE IF NOT EXISTS ips (ip TEXT PRIMARY KEY, pool TEXT NOT NULL, owner TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  namespace TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,
  last REAL NOT NULL, PRIMARY KEY (namespace, name));
CREATE INDEX IF NOT EXISTS events_by_key ON events (key);
CREATE TABLE IF NOT EXISTS managed_fields (
  kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL,
  body TEXT NOT NULL, PRIMARY KEY (kind, namespace, name));
"""
# Columns added after a store's table was first made (a lab started by an older remora is
# adopted: its table gets them with their defaults).
ADDED_COLUMNS = {"containers": [("finished", "REAL NOT NULL DEFAULT 0"),
                                ("last_state", "TEXT NOT NULL DEFAULT '{}'"),
                                ("startup_done", "INTEGER NOT NULL DEFAULT 1")],
                 "pods": [("ips", "TEXT NOT NULL DEFAULT '[]'")]}


@dataclass
class PodRow:
    uid: str
    namespace: str
    name: str
    node: int
    netns: str
    body: dict[str, Any]
    owner_kind: str = ""
    owner_name: str = ""
    template_hash: str = ""
    ip: str = ""
    phase: str = "Pending"
    message: str = ""
    deleting: int = 0
    created: float = field(default_factory=time.time)
    # every address of the pod, the primary (ip) first: status.podIPs (dual stack)
    ips: list[str] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        return list(self.ips) if self.ips else ([self.ip] if self.ip else [])


@dataclass
class ContainerRow:
    pod_uid: str
    name: str
    init: int = 0
    pid: int = 0
    start_ticks: int = 0
    cmdline: list[str] = field(default_factory=list)
    restarts: int = 0
    state: str = "Waiting"  # Waiting | Running | Terminated (Kubernetes' container states)
    reason: str = "ContainerCreating"
    exit_code: int | None = None
    started: float = 0.0
    ready: int = 0
    finished: float = 0.0  # when the run that ended (exit_code) ended
    # the run before this one, once restarted: {pid, start_ticks, restarts, exit_code,
    # reason, started, finished} (kubelet's lastState, with the old container's ID)
    last_state: dict[str, Any] = field(default_factory=dict)
    # the run's startupProbe succeeded, or it has none (kubelet's containerStatuses[].started)
    startup_done: int = 1


_JSON_COLUMNS = {"body", "cmdline", "last_state", "ips"}


def _row(cls: type[Any], row: sqlite3.Row) -> Any:
    values = {}
    for f in fields(cls):
        value = row[f.name]
        values[f.name] = json.loads(value) if f.name in _JSON_COLUMNS else value
    return cls(**values)


def _columns(obj: Any) -> dict[str, Any]:
    return {k: json.dumps(v, sort_keys=True) if k in _JSON_COLUMNS else v
            for k, v in asdict(obj).items()}


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.RLock()
        with self._write_lock:
            self._db().executescript(SCHEMA)  # executescript commits by itself
            for table, columns in ADDED_COLUMNS.items():
                have = {r["name"] for r in self._db().execute(f"PRAGMA table_info({table})")}
                for name, decl in columns:
                    if name not in have:
                        self._db().execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested calls join the outer one."""
        db = self._db()
        with self._write_lock:
            if db.in_transaction:
                yield db
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self._db().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def delete_meta(self, key: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM meta WHERE key=?", (key,))

    # -- desired objects ----------------------------------------------------------------
    def put_object(self, obj: dict[str, Any]) -> tuple[bool, int]:
        """Store OBJ; return (changed, generation). Generation grows when spec changes."""
        kind, meta = obj["kind"], obj["metadata"]
        key = (kind, meta.get("namespace", ""), meta["name"])
        body = json.dumps(obj, sort_keys=True)
        with self.tx() as db:
            row = db.execute("SELECT body, generation FROM objects WHERE kind=? AND namespace=? "
                             "AND name=?", key).fetchone()
            if row is None:
                db.execute("INSERT INTO objects VALUES (?, ?, ?, ?, 1, ?)",
                           (*key, body, time.time()))
                return True, 1
            if row["body"] == body:
                return False, int(row["generation"])
            old = json.loads(row["body"])
            generation = int(row["generation"]) + (old.get("spec") != obj.get("spec"))
            db.execute("UPDATE objects SET body=?, generation=? WHERE kind=? AND namespace=? "
                       "AND name=?", (body, generation, *key))
            return True, generation

    def get_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        row = self._db().execute(
            "SELECT body, generation, created FROM objects WHERE kind=? AND namespace=? "
            "AND name=?", (kind, namespace, name)).fetchone()
        return None if row is None else self._with_meta(row)

    @staticmethod
    def _with_meta(row: sqlite3.Row) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(row["body"])
        obj["metadata"]["generation"] = row["generation"]
        obj["metadata"].setdefault("creationTimestamp", row["created"])
        return obj

    def list_objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT body, generation, created FROM objects WHERE kind=?", [kind]
        if namespace is not None:
            sql, args = sql + " AND namespace=?", [*args, namespace]
        rows = self._db().execute(sql + " ORDER BY namespace, name", args).fetchall()
        return [self._with_meta(r) for r in rows]

    def delete_object(self, kind: str, namespace: str, name: str) -> bool:
        with self.tx() as db:
            cur = db.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?",
                             (kind, namespace, name))
            # its managedFields go with it (a bare pod's stay for its running pod, whose
            # deletion, delete_pod, removes them)
            if kind != "Pod":
                db.execute("DELETE FROM managed_fields WHERE kind=? AND namespace=? AND "
                           "name=?", (kind, namespace, name))
            return cur.rowcount > 0

    # -- managedFields ------------------------------------------------------------------
    def managed_fields(self) -> list[tuple[str, str, str, str, list[dict[str, Any]]]]:
        """Every object's managedFields: (kind, namespace, name, uid, entries as the API
        serves them); uid "" for a create whose object the API has not read yet."""
        rows = self._db().execute("SELECT kind, namespace, name, uid, body FROM "
                                  "managed_fields ORDER BY kind, namespace, name").fetchall()
        return [(r["kind"], r["namespace"], r["name"], r["uid"], json.loads(r["body"]))
                for r in rows]

    def put_managed_fields(self, kind: str, namespace: str, name: str, uid: str,
                           entries: list[dict[str, Any]] | None) -> None:
        """Set an object's managedFields (None: forget them)."""
        with self.tx() as db:
            if entries is None:
                db.execute("DELETE FROM managed_fields WHERE kind=? AND namespace=? AND "
                           "name=?", (kind, namespace, name))
            else:
                db.execute("INSERT OR REPLACE INTO managed_fields VALUES (?, ?, ?, ?, ?)",
                           (kind, namespace, name, uid, json.dumps(entries, sort_keys=True)))

    # -- pods and containers ------------------------------------------------------------
    def insert_pod(self, pod: PodRow) -> None:
        cols = _columns(pod)
        with self.tx() as db:
            db.execute(f"INSERT INTO pods ({', '.join(cols)}) VALUES "
                       f"({', '.join('?' * len(cols))})", list(cols.values()))

    def update_pod(self, uid: str, **changes: Any) -> None:
        if "body" in changes:
            changes["body"] = json.dumps(changes["body"], sort_keys=True)
        if "ips" in changes:
            changes["ips"] = json.dumps(changes["ips"])
        with self.tx() as db:
            db.execute(f"UPDATE pods SET {', '.join(f'{k}=?' for k in changes)} WHERE uid=?",
                       [*changes.values(), uid])

    def list_pods(self, namespace: str | None = None) -> list[PodRow]:
        sql, args = "SELECT * FROM pods", []
        if namespace is not None:
            sql, args = sql + " WHERE namespace=?", [namespace]
        rows = self._db().execute(sql + " ORDER BY namespace, name", args).fetchall()
        return [_row(PodRow, r) for r in rows]

    def get_pod(self, namespace: str, name: str) -> PodRow | None:
        row = self._db().execute("SELECT * FROM pods WHERE namespace=? AND name=?",
                                 (namespace, name)).fetchone()
        return None if row is None else _row(PodRow, row)

    def delete_pod(self, uid: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM containers WHERE pod_uid=?", (uid,))
            db.execute("DELETE FROM pods WHERE uid=?", (uid,))
            db.execute("DELETE FROM ips WHERE owner=?", (f"pod:{uid}",))
            db.execute("DELETE FROM managed_fields WHERE kind='Pod' AND uid=?", (uid,))

    def put_container(self, row: ContainerRow) -> None:
        cols = _columns(row)
        with self.tx() as db:
            db.execute(f"INSERT OR REPLACE INTO containers ({', '.join(cols)}) VALUES "
                       f"({', '.join('?' * len(cols))})", list(cols.values()))

    def containers(self, pod_uid: str | None = None) -> list[ContainerRow]:
        sql, args = "SELECT * FROM containers", []
        if pod_uid is not None:
            sql, args = sql + " WHERE pod_uid=?", [pod_uid]
        rows = self._db().execute(sql + " ORDER BY pod_uid, init DESC, rowid", args).fetchall()
        return [_row(ContainerRow, r) for r in rows]

    # -- events ---------------------------------------------------------------------------
    def event_by_key(self, key: str) -> dict[str, Any] | None:
        row = self._db().execute("SELECT body FROM events WHERE key=? ORDER BY rowid DESC "
                                 "LIMIT 1", (key,)).fetchone()
        return None if row is None else dict(json.loads(row["body"]))

    def put_event(self, key: str, body: dict[str, Any], last: float) -> None:
        """Insert an event, or update the one of the same namespace and name in place
        (its rowid, so the listing order, kept: a repeat only counts)."""
        meta = body["metadata"]
        names = (meta["namespace"], meta["name"])
        text = json.dumps(body, sort_keys=True)
        with self.tx() as db:
            updated = db.execute("UPDATE events SET key=?, body=?, last=? WHERE namespace=? "
                                 "AND name=?", (key, text, last, *names)).rowcount
            if not updated:
                db.execute("INSERT INTO events (namespace, name, key, body, last) VALUES "
                           "(?, ?, ?, ?, ?)", (*names, key, text, last))

    def prune_events(self, before: float, keep: int) -> int:
        """Forget the events last seen before BEFORE (their TTL ran out), then all but
        the KEEP most recently seen. Returns how many went."""
        with self.tx() as db:
            gone = db.execute("DELETE FROM events WHERE last < ?", (before,)).rowcount
            gone += db.execute("DELETE FROM events WHERE rowid NOT IN (SELECT rowid FROM "
                               "events ORDER BY last DESC, rowid DESC LIMIT ?)",
                               (keep,)).rowcount
            return int(gone)

    def list_events(self) -> list[dict[str, Any]]:
        rows = self._db().execute("SELECT body FROM events ORDER BY rowid").fetchall()
        return [dict(json.loads(r["body"])) for r in rows]

    # -- addresses ----------------------------------------------------------------------
    def used_ips(self, pool: str) -> dict[str, str]:
        rows = self._db().execute("SELECT ip, owner FROM ips WHERE pool=?", (pool,)).fetchall()
        return {r["ip"]: r["owner"] for r in rows}

    def hold_ip(self, pool: str, ip: str, owner: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO ips VALUES (?, ?, ?)", (ip, pool, owner))

    def release_ips(self, owner: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM ips WHERE owner=?", (owner,))
