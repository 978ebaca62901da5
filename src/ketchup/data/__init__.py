"""Task data: record schemas, synthetic generators, hub and local loaders."""
