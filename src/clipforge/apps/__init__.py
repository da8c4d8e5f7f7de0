"""Applications built on clipforge's models and evaluation tools (e.g. `clipforge.apps.inspect`, visual inspection)."""
