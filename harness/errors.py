"""The one exception type for user mistakes.

The CLI prints a UserError as a single line and exits with code 2; every other exception is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input from a person: a message that says what is wrong and how to fix it."""
