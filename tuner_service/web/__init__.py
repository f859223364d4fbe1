"""Server-rendered HTML: the jobs list and the best-config report page (no front-end build)."""
