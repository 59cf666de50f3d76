"""Benchmarks of the mesh against the physical limit of its database (`make bench`).

Not part of the services and not imported by them. Imports go one way: ``run``
(the command) → the sections (``throughput``, ``pipeline``, ``edge`` with
``attacks``, ``replicas``, ``tracing``, ``mesh``) and ``report`` (BENCHMARKS.md)
→ what they share: ``harness`` (the load generators, the bench's products, the
FastAPI baseline), ``sinks`` (where an order ends up), ``procstat`` (CPU from
/proc), ``connections`` (PostgreSQL's connection slots).
"""
