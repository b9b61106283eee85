"""Stage 2: design matrices per mode, heads and floors, split protocols, metrics, CV harness, reports."""
