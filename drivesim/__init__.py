"""drivesim."""
