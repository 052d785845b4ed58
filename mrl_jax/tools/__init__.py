"""Command-line tools beside the launcher (checkpoint import)."""
