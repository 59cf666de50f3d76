"""What every PolyglotMicro service does the same way.

Settings loading, logging, the gRPC server (health, reflection, error mapping,
graceful shutdown) and the process lifecycle live here once; each ``*_svc``
package only wires its own domain, stores and APIs into them.
"""
