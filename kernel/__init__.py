"""The shared kernel: event types, ports, settings, clock and the database engine.

Every area may import the kernel; the kernel imports no area.
"""
