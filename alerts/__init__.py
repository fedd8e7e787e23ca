"""The rules engine: readings in, incidents out. (Built in a later issue; the package holds its place.)"""
