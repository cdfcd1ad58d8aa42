"""Secrets: a local environment variable, or in AWS an SSM SecureString read with Powertools parameters
(cached in the Lambda instance, so rotation takes effect within ``MAX_AGE_SECONDS``). Never in plain env."""

from __future__ import annotations

import os

MAX_AGE_SECONDS = 300


def secret(local_env: str, parameter_env: str) -> str | None:
    """``local_env`` when set (make dev, tests), else the SSM parameter named by ``parameter_env``."""
    value = os.environ.get(local_env)
    if value:
        return value
    name = os.environ.get(parameter_env)
    if not name:
        return None
    from aws_lambda_powertools.utilities.parameters import get_parameter

    return get_parameter(name, decrypt=True, max_age=MAX_AGE_SECONDS)
