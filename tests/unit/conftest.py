"""What the docs generators' tests share: the contracts of the committed descriptor
set and the OpenAPI document made from them (read-only: a test that changes one
makes its own copy)."""

import pytest

from blueprint.contracts import Contracts, load_contracts
from devtools.openapi import openapi


@pytest.fixture(scope="session")
def contracts() -> Contracts:
    return load_contracts()


@pytest.fixture(scope="session")
def spec(contracts: Contracts) -> dict:
    return openapi(contracts)
