"""Training: offline and online loops, evaluation, logging."""
