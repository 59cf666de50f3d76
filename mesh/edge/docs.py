"""/docs/…: every file of the built docs site, served by Envoy itself.

Envoy reads each file once, at start (direct responses); the site is static.
"""

from pathlib import Path

from mesh.edge.blocks import Config
from mesh.edge.settings import EnvoySite
from mesh.edge.transcoder import NOT_AN_API

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".yaml": "application/yaml; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


def _static_file(path: str, file: str, content_type: str) -> Config:
    return {
        "match": {"path": path},
        "direct_response": {"status": 200, "body": {"filename": file}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": content_type},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": NOT_AN_API,
    }


def docs_routes(site: EnvoySite, docs_site: Path) -> list[Config]:
    """A route per file (and per directory's index.html), then / and /docs
    redirected to /docs/."""
    routes = []
    for file in sorted(p for p in docs_site.rglob("*") if p.is_file()):
        relative = file.relative_to(docs_site).as_posix()
        content_type = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        paths = [f"/docs/{relative}"]
        if file.name == "index.html":
            paths.append(f"/docs/{relative.removesuffix('index.html')}")
        routes += [_static_file(p, f"{site.docs_dir}/{relative}", content_type) for p in paths]
    return routes + [
        {
            "match": {"path": p},
            "redirect": {"path_redirect": "/docs/"},
            "typed_per_filter_config": NOT_AN_API,
        }
        for p in ("/", "/docs")
    ]
