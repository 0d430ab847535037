"""Attacks on valuation models: capital-constrained, random-orders baseline, universal transfer."""
