"""Trading safety controls on the runs engine: stop (with verification and a kill switch)."""
