"""vectors stored in the row: memories.embedding and preferences.embedding get STORAGE MAIN

Revision ID: 0007
Revises: 0006

pgvector's type defaults to STORAGE EXTERNAL, so a row over ~2 kB has its vector moved out of line into the TOAST
table. A 384-float vector takes 1.5 kB, so that happens to any memory with more than ~400 bytes of text (most
windows). Then every distance the dense search computes reads the vector back through the TOAST index. Measured on
a bench-like corpus (4,000 rows, one user with 1,992 of them), one search read 6,280 buffers with the vectors out of
line and about 1,000 with them inline, and spent about a third less Postgres CPU. With MAIN the vector stays in the
row: the text columns (EXTENDED) are compressed or moved out first, and a vector moves out only when the row would
not fit on a page.

Changing the storage only affects rows written afterwards, so existing vectors are rewritten in place with the same
values to move them in (on PostgreSQL 17 and later, only the ones stored out of line). Every such row gets a new
version and a new HNSW entry, so on a large table this takes a while. The table stays readable and writable
meanwhile (no table lock beyond the brief one of the ALTER).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("memories", "preferences")


def upgrade() -> None:
    conn = op.get_bind()
    # pg_column_toast_chunk_id (PostgreSQL 17+) tells the out-of-line values apart; before 17, rewrite every vector.
    out_of_line = (
        "pg_column_toast_chunk_id(embedding) IS NOT NULL"
        if (conn.dialect.server_version_info or (0,)) >= (17,)
        else "embedding IS NOT NULL"
    )
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE MAIN")
        # A new datum (not the stored TOAST pointer) is stored under the new rule; real[] and back is lossless.
        op.execute(f"UPDATE {table} SET embedding = embedding::real[]::vector WHERE {out_of_line}")


def downgrade() -> None:
    # Rows keep their vectors where they are; rows written from now on store them out of line again.
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE EXTERNAL")
