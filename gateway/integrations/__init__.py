"""Integrations at LiteLLM's paths: ``litellm.integrations.x`` is ``gateway.integrations.x``."""
