"""Adapters of the gateway's ports to their backends."""
