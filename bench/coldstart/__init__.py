"""Cold start of each deployable function: its import, and its first answered request."""
