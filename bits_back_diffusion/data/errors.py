"""The single exception type raised for problems with input data."""


class DataError(ValueError):
    """A dataset is missing, empty, unreadable or does not match the data config.

    Subclasses ValueError so generic callers still catch it, while the message is
    meant for a person: it names the offending file or folder and, where possible,
    the command that fixes the problem.
    """
