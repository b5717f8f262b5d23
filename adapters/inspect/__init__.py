"""Questions methods ask about a model, answered per adapter."""
