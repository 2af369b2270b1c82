"""Orchesity core: routing (DWA), cache, request log, tools and run progress.

Nothing here imports a web framework; the HTTP functions in `functions/` wrap it.
"""

__version__ = "0.1.0"
