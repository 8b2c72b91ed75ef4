"""Use-cases: observe the world, decide with the domain layer, act through adapters."""
