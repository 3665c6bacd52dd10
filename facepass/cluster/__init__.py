"""The cluster as the service sees it: which nodes offer room, and how the pool spreads over them."""
