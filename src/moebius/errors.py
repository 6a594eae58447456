"""Errors that mean "the user gave us something we cannot use" (the CLI exits 2 on these; one
that carries an ``exit_code`` of its own, like a rank reporting another rank's crash, exits
with that)."""


class MoebiusError(Exception):
    """Base class for problems with user input, files or configuration."""


class ConfigError(MoebiusError):
    pass


class CheckpointError(MoebiusError):
    pass


class InputError(MoebiusError):
    pass


def exit_code(error: Exception) -> int:
    """The command's exit status for ``error``: 2 for bad input (a MoebiusError), else 1."""
    if isinstance(error, MoebiusError):
        return getattr(error, "exit_code", 2)
    return 1


def explain(error: Exception) -> str:
    """One line: the message of a MoebiusError, type and message of anything else."""
    text = str(error) if isinstance(error, MoebiusError) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())
