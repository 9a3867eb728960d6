"""Recipe stage for this technique (registered on import by torchslim.stages)."""
