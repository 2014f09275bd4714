"""`kgb web`: a read-only browser over what the consumers stored (winni's tables, the metrics rollups)."""
