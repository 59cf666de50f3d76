"""Helpers for the test suite: ports, throwaway databases, a cuttable TCP proxy."""

import pytest

# Its assertions explain themselves in a failing test, as a test module's do.
pytest.register_assert_rewrite("tests.support.pipeline")
