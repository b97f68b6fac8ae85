"""The base: errors, files, config, provenance, tracking, processes. Imports nothing above it."""
