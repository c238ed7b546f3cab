"""Puts tests/consensus on sys.path so its tests can `import convex_problems`."""
