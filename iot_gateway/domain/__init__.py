"""Pure domain code of the gateway: no I/O, no clock reads."""
