"""Helpers for the test suite: ports, throwaway databases, a cuttable TCP proxy."""
