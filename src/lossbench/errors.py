"""The one domain exception. Only `cli.py` turns it into a message and an exit code."""


class LossbenchError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class PeerLost(LossbenchError):
    """A rank of a data-parallel run lost its peers (one died or hung): not a failure of the
    run itself, which resumes from its last checkpoint when the command is run again."""
