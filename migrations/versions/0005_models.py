"""Uploaded model files, the job's model, and the registry of live workers (with the plugin
models each can build).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tuner_jobs") as batch:
        batch.add_column(sa.Column("model_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("model", sa.JSON(), nullable=True))
        batch.create_index("ix_tuner_jobs_model_id", ["model_id"])
    op.create_table(
        "tuner_models",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("inspection", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("inspected_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tuner_models"),
        sa.UniqueConstraint("tenant", "sha256", name="uq_tuner_models_tenant"),
    )
    op.create_index("ix_tuner_models_tenant", "tuner_models", ["tenant"])
    op.create_index("ix_tuner_models_sha256", "tuner_models", ["sha256"])
    op.create_table(
        "tuner_workers",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("plugins", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tuner_workers"),
    )
    op.create_index("ix_tuner_workers_heartbeat_at", "tuner_workers", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_tuner_workers_heartbeat_at", table_name="tuner_workers")
    op.drop_table("tuner_workers")
    op.drop_index("ix_tuner_models_sha256", table_name="tuner_models")
    op.drop_index("ix_tuner_models_tenant", table_name="tuner_models")
    op.drop_table("tuner_models")
    with op.batch_alter_table("tuner_jobs") as batch:
        batch.drop_index("ix_tuner_jobs_model_id")
        batch.drop_column("model")
        batch.drop_column("model_id")
