"""Evaluation: perplexity, KL divergence and speed against a base, stored measurements, compare, recommend."""
