"""Samplers that turn one or more `TransitionStore`s into training batches (COG's task/prior mix, uniform replay)."""
