"""Mutation testing: deliberate breaks of the product that the suite must catch."""
