"""Native gRPC requests checked at the edge: Envoy's Lua filter with grpc_input.lua.

grpcio answers a malformed gRPC request itself, before any Python runs, with
INTERNAL and its own text, or waits for a message that never comes (a truncated
stream). The script answers those at once with INVALID_ARGUMENT (an unknown
grpc-encoding: UNIMPLEMENTED) and a plain message; the backend never sees them.

It runs only on the routes of gRPC methods and health (``PER_ROUTE``), after the
buffer filter (the whole request is there) and before the transcoder, where REST
calls are still on their REST paths: they never run it.
"""

from pathlib import Path

from blueprint.edge.blocks import Config, Named, Script, typed
from blueprint.edge.replies import size_text
from blueprint.edge.settings import EnvoySite

LUA = "envoy.filters.http.lua"
SCRIPT = Path(__file__).with_name("grpc_input.lua")
_NAME = "grpc_input"
# Per route: run the script (the filter has no default one, so elsewhere it does nothing).
PER_ROUTE = Named("grpc_input_check", {LUA: typed("filters.http.lua.v3.LuaPerRoute", name=_NAME)})


def grpc_input_filter(site: EnvoySite) -> Config:
    limit = site.grpc_message_limit_bytes
    # The script's two settings, as Lua globals in front of it.
    settings = f'MESH_MESSAGE_LIMIT = {limit}\nMESH_LIMIT_TEXT = "{size_text(limit)}"\n'
    # The file's comments stay in the file.
    code = "\n".join(
        line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("--")
    )
    source = Script(settings + code.strip() + "\n")
    return {
        "name": LUA,
        "typed_config": typed(
            "filters.http.lua.v3.Lua", source_codes={_NAME: {"inline_string": source}}
        ),
    }
