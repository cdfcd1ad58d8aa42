"""Data access: one module per aggregate, DynamoDB item mapping kept apart from the domain models."""
