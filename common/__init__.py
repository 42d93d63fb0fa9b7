"""The base every other package imports downward: the user-facing error, atomic file writes,
the registry helper and the repository root. It imports nothing from nfebench."""
