"""Dashboard pages (one view per module)."""
