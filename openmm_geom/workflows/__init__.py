"""End-to-end jobs assembled from the library (what the CLI runs)."""
