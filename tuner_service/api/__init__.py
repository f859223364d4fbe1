"""HTTP API: thin routes over the use cases."""
