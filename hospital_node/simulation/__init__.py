"""The N-hospital simulation (`ecl-sim`): every method on the same data, model and budget."""
