"""The base of errors about an input the user must fix or replace, which every command reports the same
way: one line naming the file and the fix, exit code 2 (``commands.exit_codes``)."""

from __future__ import annotations


class InputRefused(ValueError):
    """A file the user passed cannot be used as it is (a damaged or altered bundle, a bad key file)."""
