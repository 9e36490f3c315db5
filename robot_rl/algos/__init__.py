"""Learning algorithms, each readable top to bottom in one file."""
