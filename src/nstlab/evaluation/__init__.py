"""Evaluation: stylise the held-out test pairs with every model and score them alike."""
