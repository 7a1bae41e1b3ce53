"""Averaging: progress and matchmaking, the butterfly all-reduce and its load balancing, link measurement, robust aggregation, state download, and the two records of a round."""
