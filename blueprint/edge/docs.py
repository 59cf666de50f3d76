"""/docs/…: every file of the built docs site, served by Envoy itself.

Envoy reads each file once, at start (direct responses); the site is static.
"""

from pathlib import Path

from blueprint.edge.blocks import Config, Named, set_header
from blueprint.edge.settings import EnvoySite
from blueprint.edge.transcoder import NOT_AN_API

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


def _static_file(path: str, file: str, content_type: Config) -> Config:
    return {
        "match": {"path": path},
        "direct_response": {"status": 200, "body": {"filename": file}},
        "response_headers_to_add": [content_type],
        "typed_per_filter_config": NOT_AN_API,
    }


def docs_routes(site: EnvoySite, docs_site: Path) -> list[Config]:
    """A route per file (and per directory's index.html), then / and /docs
    redirected to /docs/."""
    # One content-type header per kind of file, written once in the YAML.
    content_types = {
        suffix: Named(f"content_type_{suffix.lstrip('.')}", set_header("content-type", value))
        for suffix, value in CONTENT_TYPES.items()
    }
    other = Named("content_type_other", set_header("content-type", "application/octet-stream"))
    routes = []
    for file in sorted(p for p in docs_site.rglob("*") if p.is_file()):
        relative = file.relative_to(docs_site).as_posix()
        content_type = content_types.get(file.suffix, other)
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
