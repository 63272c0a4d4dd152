"""Collectors: read source files against their contracts into the store."""
