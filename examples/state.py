"""State that survives reloads.

A reload runs the new source in the module's existing namespace, so a name that is
already bound is still there: the `try` finds it and keeps its value, and only the very
first import takes the `except` branch.
"""
try:
    requests
except NameError:
    requests = 0
