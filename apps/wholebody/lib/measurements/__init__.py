"""Figures per segmented structure (volume, HU statistics, position) that travel with each result."""
