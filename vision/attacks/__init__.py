"""Image attacks: callable objects ``atk(model, x, y) -> AttackResult``."""
