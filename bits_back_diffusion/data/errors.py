"""The exception types raised for problems with input data."""


class DataError(ValueError):
    """A dataset is missing, empty, unreadable or does not match the data config.

    Subclasses ValueError so generic callers still catch it, while the message is
    meant for a person: it names the offending file or folder and, where possible,
    the command that fixes the problem.
    """


class ImageFileError(DataError):
    """One image file that cannot be coded losslessly.

    Keeps the path, the reason and a kind of fix apart from the message, so that a folder scan can
    list every bad file in one error and give each kind of fix once.
    """

    def __init__(self, message: str, path: str, reason: str, fix: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason
        self.fix = fix
