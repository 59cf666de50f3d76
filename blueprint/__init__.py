"""The mesh described once, at build time: which services exist and where they
listen (``topology``), what their contracts say (``contracts``), who may call what
(``access``), and the configs rendered from them: Envoy's (``edge``; ``python -m
blueprint.edge``) and Prometheus's (``prometheus``; ``python -m blueprint.prometheus``).
The launcher, compose, Kubernetes, the docs and the tests all read these; the
services never do (they run on ``meshkit/``), and ``devtools/`` holds only the tools
a developer runs.
"""
