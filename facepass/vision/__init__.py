"""Images and faces: fetching, decoding, the model pack and the per-photo pipeline."""
