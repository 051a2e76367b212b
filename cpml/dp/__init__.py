"""Weighted distributed differential privacy: accountant, party DP-GD, aggregation."""
