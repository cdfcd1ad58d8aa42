"""Pure domain logic: no AWS, no I/O. Everything here is a plain function over plain models."""
