"""The DMS core: operator, masks, layer handlers, supernet, resource model, pruning and export."""
