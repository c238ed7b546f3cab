"""The results store (SQLite): schema, write side, read side."""
