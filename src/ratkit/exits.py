"""How a ``rat`` command ends: its exit codes, one definition for the command line, the study's
run lock and the requeueing job, and :class:`UserError`, printed as one line with exit 2.

Free of torch and of the rest of ratkit, like :mod:`ratkit.requeue`, which imports it."""

EXIT_USER_ERROR = 2
EXIT_IN_USE = 73  # rat study: a run was in use by another process and was left to it
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later"; a job script requeues on it


class UserError(Exception):
    """A problem the user can fix from the message alone; printed without a traceback."""
