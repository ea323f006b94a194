"""Placement backends: where instances start and stop (the lab now; KubeFed and Karmada next)."""
