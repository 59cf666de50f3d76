"""The mesh as a whole, as the product defines it: which services exist and where
they listen (``topology``), what their contracts say (``contracts``), who may call
what (``access``), and the edge that enforces it, Envoy's configuration generated
from those three (``edge``; ``python -m mesh.envoy_config`` renders it). The
launcher, compose, Kubernetes, the docs and the tests all read these;
``devtools/`` holds only the tools a developer runs.
"""
