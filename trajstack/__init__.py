"""trajstack."""
