"""Prompt encoding recipes (Sana's Gemma-2 CHI recipe, Wan's UMT5 recipe)."""
