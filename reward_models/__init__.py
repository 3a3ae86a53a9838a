"""Reward functions for rlkit: verifiable rule-based rewards and model-based scorers."""
