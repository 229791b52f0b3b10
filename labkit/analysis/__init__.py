"""Measurements and figures computed from runs."""
