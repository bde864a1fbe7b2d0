"""One module per server; the registry maps names to provider classes."""
