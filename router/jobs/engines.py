"""Which engine `jobs.database` names, and opening it: a `postgresql://` URL is Postgres, anything else a SQLite file.

What must not live here: the engines themselves (router.jobs.sqlite,
router.jobs.postgres), what the stores see of them (router.jobs.database).
"""

from __future__ import annotations

from router.jobs.database import Database


def is_postgres(setting: str) -> bool:
    return setting.startswith(("postgresql://", "postgres://"))


async def open_database(setting: str, files: str | None = None) -> Database:
    """The job database `jobs.database` names, its schema brought up to date; `files`: a directory for file
    contents (default: beside a SQLite file, inside a Postgres database)."""
    if is_postgres(setting):
        from router.jobs.postgres import PostgresDatabase  # psycopg is the cluster extra's: imported when used

        return await PostgresDatabase.open(setting, files)
    from router.jobs.sqlite import SqliteDatabase

    return await SqliteDatabase.open(setting, files)
