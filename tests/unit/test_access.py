"""The one scope table: every RPC of the contracts is classified, or generation fails."""

import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorSet

from blueprint import access
from blueprint.contracts import DESCRIPTOR_SET


def test_the_issues_rules():
    scopes = {m.path: m.scope for m in access.method_access()}
    inventory = "/polyglot.inventory.v1.InventoryService"
    assert scopes[f"{inventory}/GetStock"] is None
    assert scopes[f"{inventory}/ListProducts"] is None
    assert scopes[f"{inventory}/DecreaseStock"] == "orders:write"
    assert scopes[f"{inventory}/RestockProduct"] == "inventory:admin"
    others = {p: s for p, s in scopes.items() if not p.startswith(inventory)}
    assert others and set(others.values()) == {"reports:read"}
    assert access.all_scopes() == ["inventory:admin", "orders:write", "reports:read"]


def test_a_new_rpc_without_a_decision_fails(tmp_path):
    files = FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    inventory = next(f for f in files.file if f.package == "polyglot.inventory.v1")
    existing = inventory.service[0].method[0]
    inventory.service[0].method.add(
        name="DeleteEverything", input_type=existing.input_type, output_type=existing.output_type
    )
    changed = tmp_path / "mesh.binpb"
    changed.write_bytes(files.SerializeToString())
    with pytest.raises(access.UnclassifiedMethod, match="DeleteEverything"):
        access.method_access(changed)
