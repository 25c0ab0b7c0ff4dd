"""Shared test helpers (imported as `helpers.xxx`)."""
