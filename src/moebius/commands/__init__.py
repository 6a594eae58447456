"""Sub-commands of the ``moebius`` CLI, one module each."""
