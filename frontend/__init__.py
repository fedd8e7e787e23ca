"""The wall display (static files served by the command center)."""
