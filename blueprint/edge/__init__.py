"""Envoy at the edge: its configuration, generated from the mesh's contracts.

One module per concern; a request meets them in this order:

- ``settings``: what a deployment tunes (``EnvoySite``, ``EdgeAuth``, ``EdgeTracing``);
- ``listener``: the ingress listener, its connection manager, the HTTP filter chain
  and the route table, in order;
- ``refusals``: requests refused by their shape (405, 415, unknown gRPC method);
- ``transcoder``: REST/JSON ↔ gRPC;
- ``auth``: jwt_authn and RBAC from the scope table (blueprint/access.py);
- ``admission``: rate limit, message size, circuit breakers, outlier detection,
  the connection cap;
- ``routes``: one route per RPC (timeouts, retries), health and reflection;
- ``docs``: the docs site served by Envoy;
- ``clusters``: the backends' replicas and the services outside the mesh;
- ``replies``: Envoy's own answers in the mesh's error shape;
- ``tracing``: OpenTelemetry;
- ``render``: the whole config, the deployments' sites and the CLI
  (``python -m blueprint.edge``).
"""
