"""The HTTP API's building blocks: route modules (``routes``, one Powertools Router per area), the error
catalogue (``errors``), shared route dependencies (``deps``) and the OpenAPI document (``openapi``).
``functions/api/app.py`` assembles them into the resolver Lambda runs."""
