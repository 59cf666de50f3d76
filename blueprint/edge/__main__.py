"""``python -m blueprint.edge``: renders Envoy's checked-in configs (``render.main``)."""

import sys

from blueprint.edge.render import main

main(sys.argv[1:])
