"""Training procedures: standard, PGD adversarial, fast (FGSM + random start), TRADES."""
