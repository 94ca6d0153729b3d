"""LiteLLM's module paths that handler code imports, so it runs with the import changed."""
