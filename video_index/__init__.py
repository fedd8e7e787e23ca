"""The camera catalog, its spatial index, the health watch and the live view."""
