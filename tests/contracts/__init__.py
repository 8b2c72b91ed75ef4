"""Expectations shared by an in-memory adapter and the real one (contract tests)."""
