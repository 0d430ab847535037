"""The image side: models, attacks, defenses and robustness experiments."""
