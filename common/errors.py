"""The one exception type users see as a clean one-line error."""


class NfebenchError(Exception):
    """Bad input or a failed invariant that the user can act on.

    launch.py turns it into a single line on stderr and a non-zero exit.
    """
