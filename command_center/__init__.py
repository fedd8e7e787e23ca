"""The command center: wires the areas together and serves the HTTP API and the wall."""
