"""The one exception type for user mistakes (bad options, bad data, bad caches).

The CLI turns a :class:`GalgenError` into a single line ``galgen: error: ...`` on stderr and
exit status 2, instead of a traceback. Raise it with a message that names the option or file
and says what is wrong.
"""


class GalgenError(Exception):
    """A user-facing error: the message is shown as one line, without a traceback."""
