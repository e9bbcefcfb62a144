"""Several replicas, one controller: the shared state in Redis (shared) and one replica's part (coordinator)."""
