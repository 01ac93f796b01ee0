"""The errors a user can act on, each carrying the exit code its command ends with.

Library code raises them; ``commands.exit_codes.run_guarded`` prints the message as one line on stderr
and exits with ``exit_code``, so no command sorts exceptions by reading their text. The codes are the
documented ones in ``commands.exit_codes`` (a test checks they agree).
"""

from __future__ import annotations


class TriageError(Exception):
    """Base of the errors a user can fix; ``prefix`` starts the one-line message on stderr."""

    exit_code = 2  # EXIT_USAGE
    prefix = ""


class UsageError(TriageError, ValueError):
    """A command line, option combination or configuration the user must change (exit 2)."""


class InputRefused(UsageError):
    """A file the user passed cannot be used as it is (a damaged or altered bundle, a bad key file)."""


class DeviceUnavailable(UsageError, RuntimeError):
    """The requested device is not on this machine (e.g. ``cuda`` without a GPU)."""
