"""Shared helpers for kvmfleet's tests."""
