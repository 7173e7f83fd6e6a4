"""The one domain exception. Only the command line's `main` (`lossbench.cli`) turns it into a
one-line message and an exit code."""


class LossbenchError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class PeerLost(LossbenchError):
    """A rank of a data-parallel run lost its peers (one died or hung): not a failure of the
    run itself, which resumes from its last checkpoint when the command is run again."""
