"""Builds the docs site Envoy serves at /docs/: ``python -m devtools.docs_site``.

Writes docs/site/ from the contracts' descriptor set (gRPC reference, OpenAPI
document, the Postman collection made from it, landing page), the mesh's
AsyncAPI app (devtools.asyncapi) and the Swagger UI and AsyncAPI React builds
vendored from node_modules, so the site needs no network. The output is
deterministic (no timestamps), committed and checked for drift; Envoy's config
lists its files, so build it before ``python -m blueprint.edge`` (``make docs``).
"""

import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faststream.specification.asyncapi.site import get_asyncapi_html
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from blueprint.access import required_scope
from blueprint.contracts import DESCRIPTOR_SET, Contracts, Field, load_contracts, summary
from blueprint.topology import DOCS_SITE, ROOT
from devtools import postman
from devtools.asyncapi import docs as asyncapi_app  # the app `faststream docs gen` reads
from devtools.openapi import WELL_KNOWN, openapi, swagger_anchor

TEMPLATES = Path(__file__).parent / "docs_templates"
NODE_MODULES = ROOT / "node_modules"
ASYNCAPI_YAML = ROOT / "docs" / "asyncapi.yaml"
# Site path → file under node_modules (versions pinned in package.json).
VENDORED = {
    "vendor/swagger-ui/swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
    "vendor/swagger-ui/swagger-ui-bundle.js.LICENSE.txt": (
        "swagger-ui-dist/swagger-ui-bundle.js.LICENSE.txt"
    ),
    "vendor/swagger-ui/swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
    "vendor/swagger-ui/LICENSE.txt": "swagger-ui-dist/LICENSE",
    "vendor/swagger-ui/NOTICE.txt": "swagger-ui-dist/NOTICE",
    "vendor/asyncapi-react/index.js": "@asyncapi/react-component/browser/standalone/index.js",
    "vendor/asyncapi-react/index.js.LICENSE.txt": (
        "@asyncapi/react-component/browser/standalone/index.js.LICENSE.txt"
    ),
    "vendor/asyncapi-react/default.min.css": "@asyncapi/react-component/styles/default.min.css",
    "vendor/asyncapi-react/LICENSE.txt": "@asyncapi/react-component/LICENSE",
}
PAGES = ("index.html", "grpc.html", "rest.html")


def doc_html(comment: str) -> Markup:
    """A proto doc comment as HTML: paragraphs, `code` spans; everything escaped."""
    paragraphs = [p.replace("\n", " ") for p in comment.split("\n\n") if p.strip()]
    return Markup("".join(f"<p>{_code_spans(escape(p))}</p>" for p in paragraphs))


def _code_spans(escaped: Markup) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escaped))


FieldView = dict[str, str | None]


def _field_type(contracts: Contracts) -> Callable[[Field], FieldView]:
    """For the templates: how a field's type, label and JSON form are shown."""

    def describe(field: Field) -> FieldView:
        label = "optional" if field.optional else "repeated" if field.repeated else ""
        if entry := contracts.map_entry(field):
            key, value = entry.fields
            text = f"map<{key.scalar_name}, {value.type_name or value.scalar_name}>"
            return {"text": text, "href": None, "label": "map", "json": "object"}
        if not field.type_name:
            json_form = "string" if field.scalar_name.endswith("int64") else None
            return {"text": field.scalar_name, "href": None, "label": label, "json": json_form}
        is_enum = field.type_name in contracts.enums
        known = is_enum or field.type_name in contracts.messages
        json_form = "value name" if is_enum else WELL_KNOWN.get(field.type_name, {}).get("format")
        return {
            "text": field.type_name.removeprefix("polyglot."),
            "href": f"#{field.type_name}" if known else None,
            "label": label,
            "json": f"string ({json_form})" if json_form else None,
        }

    return describe


def _environment(contracts: Contracts) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(doc=doc_html, summary=summary, short=lambda name: name.rsplit(".", 1)[-1])
    env.globals.update(
        contracts=contracts,
        rest_anchor=swagger_anchor,
        field_type=_field_type(contracts),
        required_scope=required_scope,
        postman_collection=postman.FILE_NAME,
    )
    return env


def render_pages(contracts: Contracts) -> dict[str, str]:
    """Every HTML page of the site, by file name."""
    env = _environment(contracts)
    pages = {name: env.get_template(name).render() for name in PAGES}
    pages["asyncapi.html"] = asyncapi_page(env.get_template("nav.html").render())
    return pages


def asyncapi_page(nav: str) -> str:
    """FastStream's AsyncAPI page of the mesh, made offline (vendored assets, no favicons)."""
    html = get_asyncapi_html(
        asyncapi_app.schema.to_specification(),
        asyncapi_js_url="vendor/asyncapi-react/index.js",
        asyncapi_css_url="vendor/asyncapi-react/default.min.css",
        try_it_out_path=None,  # no broker behind a static page
    )
    html = re.sub(r'\s*<link rel="icon"[^>]*https://[^>]*>', "", html)
    head = '<meta charset="utf-8">\n<link rel="icon" href="data:,">\n'
    head += '<link rel="stylesheet" href="site.css">'
    html = _insert_after(html, "<head>", head)
    return _insert_after(html, "<body>", nav)


def _insert_after(html: str, tag: str, addition: str) -> str:
    if tag not in html:  # a FastStream upgrade changed the page
        raise ValueError(f"AsyncAPI page has no {tag}")
    return html.replace(tag, f"{tag}\n{addition}", 1)


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def build(out: Path = DOCS_SITE, descriptor_set: Path = DESCRIPTOR_SET) -> None:
    if missing := [s for s in VENDORED.values() if not (NODE_MODULES / s).exists()]:
        raise SystemExit(f"node_modules lacks {missing}: run `make tools` (npm ci) first")
    contracts = load_contracts(descriptor_set)
    shutil.rmtree(out, ignore_errors=True)  # nothing stale survives
    for name, html in render_pages(contracts).items():
        _write(out / name, html)
    shutil.copyfile(TEMPLATES / "site.css", out / "site.css")
    spec = openapi(contracts)
    _write(out / "openapi.json", _json(spec))
    _write(out / postman.FILE_NAME, _json(postman.collection(spec)))
    shutil.copyfile(ASYNCAPI_YAML, out / "asyncapi.yaml")
    for target, source in VENDORED.items():
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(NODE_MODULES / source, out / target)


def main() -> None:
    build()
    print(f"wrote {DOCS_SITE.relative_to(ROOT)}/", file=sys.stderr)


if __name__ == "__main__":
    main()
