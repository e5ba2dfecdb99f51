"""Small helpers shared across vpdd: atomic file output, hashing, logging setup."""
