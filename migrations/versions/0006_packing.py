"""How a job's trials are packed: the size of its latest pack and why (packed trials).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tuner_jobs") as batch:
        batch.add_column(sa.Column("packing", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tuner_jobs") as batch:
        batch.drop_column("packing")
