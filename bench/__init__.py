"""Benchmarks of the mesh against the physical limit of its database (`make bench`).

Not part of the services and not imported by them.
"""
