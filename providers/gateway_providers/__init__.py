"""Provider modules: one per backend, each a ``gateway.provider.Provider``."""
