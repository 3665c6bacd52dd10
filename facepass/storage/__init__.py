"""Where photos live: the object storage's addressing, signing and paths (no HTTP client here)."""
