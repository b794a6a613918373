"""The one exception type for problems the user can fix (bad paths, files, configs)."""


class UserError(Exception):
    """Printed as a single message by the entry points, without a traceback."""
