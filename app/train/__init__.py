"""Training the behaviour model (torch, an optional dependency group: `pip install -e
'.[train]'`). Nothing in the worker imports this package."""
