"""The one error type of the stack: its message is what the user reads."""


class StackError(RuntimeError):
    """Something in the local stack could not be done; the message says what and where."""
