"""`kgb replay`: rebuild the winni tables from the whole topic, beside the live ones, and swap them in."""
