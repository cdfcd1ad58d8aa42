"""Shared code of the credits ledger: domain logic, data access and models used by every Lambda function."""
