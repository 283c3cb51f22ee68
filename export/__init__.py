"""Converters: one module per conversion, each a plain function with typed options and result."""
