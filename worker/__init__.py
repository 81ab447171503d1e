"""taskrank: worker."""
