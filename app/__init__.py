"""taskrank: app."""
