"""peerd's benchmarks: scripts that print their figures (not tests)."""
