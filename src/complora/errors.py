"""The project's user-facing error type: the CLI prints these as one clear line instead of a traceback."""


class ComploraError(Exception):
    """An error caused by the user's input (a file, a flag, a config field), with a message saying the fix."""
