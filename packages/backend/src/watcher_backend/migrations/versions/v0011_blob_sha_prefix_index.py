"""Blobs are found by a 16-hex-digit prefix index, not a unique index on the whole sha256.

SHA-256 keys are random, so every new blob lands on a random page of its index, and each
commit rewrites every index page it touched (WAL, then the checkpoint). With 64-character
keys that index was ~4x larger than with 16: in bench b's data the blob insert was the
largest single ingest cost (in-process writer: ~4 µs per event less with the prefix
index). Lookups compare the full sha256 as well, so a shared prefix never mixes contents.

SQLite: the table is rebuilt (``id`` INTEGER PRIMARY KEY instead of the sha256 key; rows
keep their order). PostgreSQL (several backends may write at once) keeps a unique index on
sha256 for ``ON CONFLICT DO NOTHING`` and gets the prefix index too.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = "sha256, size, stored_size, codec, data, created_us"
_PREFIX = "substr(sha256, 1, 16)"


def _rebuild_sqlite_blobs(*, keyed_by_sha: bool) -> None:
    """SQLite cannot drop or add a primary key: copy into 0011's shape (an ``id`` key) or,
    downgrading, 0001's (the sha256 key; a duplicate hash, impossible from the writer,
    would be dropped rather than fail), in the original order."""
    id_column = [] if keyed_by_sha else [sa.Column("id", sa.Integer(), nullable=False)]
    op.create_table(
        "blobs_rebuilt",
        *id_column,
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("stored_size", sa.BigInteger(), nullable=False),
        sa.Column("codec", sa.String(length=16), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sha256" if keyed_by_sha else "id"),
    )
    verb = "INSERT OR IGNORE" if keyed_by_sha else "INSERT"
    op.execute(
        f"{verb} INTO blobs_rebuilt ({_COLUMNS}) SELECT {_COLUMNS} FROM blobs ORDER BY rowid"  # noqa: S608
    )
    op.drop_table("blobs")
    op.rename_table("blobs_rebuilt", "blobs")


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE blobs DROP CONSTRAINT blobs_pkey")
        op.execute("ALTER TABLE blobs ADD COLUMN id BIGSERIAL PRIMARY KEY")
        op.create_index("ux_blobs_sha256", "blobs", ["sha256"], unique=True)
    else:
        _rebuild_sqlite_blobs(keyed_by_sha=False)
    op.create_index("ix_blobs_sha_prefix", "blobs", [sa.text(_PREFIX)])


def downgrade() -> None:
    op.drop_index("ix_blobs_sha_prefix", table_name="blobs")
    if op.get_context().dialect.name == "postgresql":
        op.drop_index("ux_blobs_sha256", table_name="blobs")
        op.execute("ALTER TABLE blobs DROP COLUMN id")
        op.execute("ALTER TABLE blobs ADD PRIMARY KEY (sha256)")
    else:
        _rebuild_sqlite_blobs(keyed_by_sha=True)
