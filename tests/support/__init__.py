"""Helpers for the test suite: ports, throwaway databases, a cuttable TCP proxy, the
fakes of our ports (fakes.py) and the one way to make sales (sales.py)."""

import pytest

# Its assertions explain themselves in a failing test, as a test module's do.
pytest.register_assert_rewrite("tests.support.pipeline")
