"""``moebius serve``: a REST service and a browser UI for inpainting, safe for several users.

``app`` (routes), ``inputs`` (reading requests), ``images`` (safe decoding), ``jobs`` (queues,
workers, progress events), ``store`` (kept images), ``models`` (what is served), ``schemas``
(documented shapes), ``errors``, ``config`` (limits), ``static/`` (the UI, no build step).
"""
