"""Wasserstein adversarial examples: projected Sinkhorn onto the Wasserstein ball (local transport plans), the
Wasserstein PGD attack with its adaptive radius, and Wasserstein adversarial training (spec-003 section 2.10)."""

from .sinkhorn import Projection, lambertw_exp, local_cost, project_wasserstein

__all__ = ["Projection", "lambertw_exp", "local_cost", "project_wasserstein"]
