"""The cloud catalog: read-only access to sessions and photos."""
