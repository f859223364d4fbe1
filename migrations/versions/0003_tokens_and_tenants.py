"""Tokens and tenants: API tokens, browser sessions, and an owner for every job.

Jobs stored before this revision belong to the tenant ``local`` (the embedded default's).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tuner_jobs") as batch:
        batch.add_column(sa.Column("tenant", sa.String(64), nullable=False,
                                   server_default="local"))
        batch.create_index("ix_tuner_jobs_tenant", ["tenant"])
    op.create_table(
        "tuner_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tuner_tokens"),
        sa.UniqueConstraint("digest", name="uq_tuner_tokens_digest"),
    )
    op.create_index("ix_tuner_tokens_tenant", "tuner_tokens", ["tenant"])
    op.create_table(
        "tuner_browser_sessions",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"], ["tuner_tokens.id"], ondelete="CASCADE",
            name="fk_tuner_browser_sessions_token_id_tuner_tokens",
        ),
        sa.PrimaryKeyConstraint("digest", name="pk_tuner_browser_sessions"),
    )
    op.create_index("ix_tuner_browser_sessions_token_id", "tuner_browser_sessions",
                    ["token_id"])


def downgrade() -> None:
    op.drop_index("ix_tuner_browser_sessions_token_id", table_name="tuner_browser_sessions")
    op.drop_table("tuner_browser_sessions")
    op.drop_index("ix_tuner_tokens_tenant", table_name="tuner_tokens")
    op.drop_table("tuner_tokens")
    with op.batch_alter_table("tuner_jobs") as batch:
        batch.drop_index("ix_tuner_jobs_tenant")
        batch.drop_column("tenant")
