"""Errors that mean "the user gave us something we cannot use" (the CLI exits 2 on these)."""


class MoebiusError(Exception):
    """Base class for problems with user input, files or configuration."""


class ConfigError(MoebiusError):
    pass


class CheckpointError(MoebiusError):
    pass


class InputError(MoebiusError):
    pass
