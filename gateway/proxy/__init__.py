"""LiteLLM's ``litellm.proxy`` names that callback modules import (``_types``)."""
