"""taskrank: library."""
