"""The camera catalog, spatial index and stream prober.

Built in a later issue; the package holds its place.
"""
