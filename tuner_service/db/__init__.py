"""The service's own tables (Optuna keeps its own)."""
