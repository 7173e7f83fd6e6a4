"""The one domain exception. Only `cli.py` turns it into a message and an exit code."""


class LossbenchError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""
