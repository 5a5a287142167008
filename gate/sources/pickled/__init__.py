"""Reading pickled models without running them: see gate/sources/pickled/source.py."""
