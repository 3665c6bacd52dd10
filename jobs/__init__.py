"""Ray job entry points and command-line clients."""
