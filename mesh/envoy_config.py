"""``python -m mesh.envoy_config``: renders Envoy's checked-in configs.

The generator lives in mesh/edge/ (one module per concern; ``mesh.edge.render``
assembles them); this module is the command's stable name, used by `make
generate`, the READMEs and the generated files' header.
"""

import sys

from mesh.edge.render import main

if __name__ == "__main__":
    main(sys.argv[1:])
