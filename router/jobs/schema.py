"""The job database's tables, one definition for both engines, and the version they are at.

Written in SQLite's types, as the embedded store has always had them;
`for_postgres()` gives the same tables in Postgres' types (REAL is a 4-byte
float there: timestamps need DOUBLE PRECISION) with the table only Postgres
needs, `file_chunks` (router.jobs.database_files).

What must not live here: migrations of older files (router.jobs.sqlite), connections.
"""

from __future__ import annotations

TABLES = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    idempotency_key TEXT,
    payload_hash TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- tries that ended, and starts a crash or a lost lease cut short
    claims INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_until REAL,
    status_code INTEGER,
    response_headers TEXT,
    response_body BLOB,
    error TEXT,
    finished_at REAL,
    batch_id TEXT,
    custom_id TEXT,
    line INTEGER,
    owner TEXT,  -- router.jobs.tenants. NULL: made before owners existed, seen by the admin API only
    credentials TEXT,  -- JSON header pairs, kept only until the job ends
    deadline_at REAL,  -- wall-clock seconds by which the job must have its answer, if it has a deadline
    lane TEXT,  -- the lane it must run on, set when a provider batch gives it back (NULL: the jobs lane)
    provider_batch TEXT  -- the provider batch (provider_batches) it was gathered into, while it is there
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, line);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key);
CREATE INDEX IF NOT EXISTS jobs_provider ON jobs (provider_batch, state) WHERE provider_batch IS NOT NULL;
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    owner TEXT  -- the content is in the file directory (router.jobs.files), named by id
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS provider_batches (
    id TEXT PRIMARY KEY,  -- ours (pb_...): the input file's name and the batch's metadata at the provider
    lane TEXT NOT NULL,
    api TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    owner TEXT,
    credentials TEXT,  -- JSON header pairs of its jobs' owner, erased when the batch ends
    status TEXT NOT NULL,  -- gathering -> uploading -> submitted -> ended
    created_at REAL NOT NULL,
    lines INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    file_id TEXT,
    remote_id TEXT,
    remote_status TEXT,
    polls INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,  -- provider calls that failed in a row
    next_poll_at REAL,
    submitted_at REAL,
    ended_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS provider_batches_open ON provider_batches (status, lane);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,  -- what one process at a time may do: provider_bridge:<lane>
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""
# SQLite's `PRAGMA user_version`; Postgres keeps it in `meta` (it starts at this version).
SCHEMA_VERSION = 3  # 1: owners; 2: deadlines, lanes and provider batches; 3: leases

_FILE_CHUNKS = """
CREATE TABLE IF NOT EXISTS file_chunks (
    file_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (file_id, seq)
)
"""


def for_postgres() -> list[str]:
    """The statements that make every table in Postgres, each one on its own."""
    tables = TABLES.replace(" REAL", " DOUBLE PRECISION").replace(" BLOB", " BYTEA")
    return [statement for statement in (*tables.split(";"), _FILE_CHUNKS) if statement.strip()]
