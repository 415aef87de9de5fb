"""Exit codes (the contract, identical in every output format) and the errors that map to them."""

from __future__ import annotations

EXIT_OK = 0  # healthy (warnings allowed unless --strict)
EXIT_FAIL = 1  # a failure was found (fix: nothing could be fixed)
EXIT_USAGE = 2  # usage or configuration error
EXIT_COULD_NOT_RUN = 3  # a check could not run (timeout, network)
EXIT_ROLLED_BACK = 4  # fix applied, verification failed, everything rolled back
EXIT_INTERNAL = 70  # internal crash (EX_SOFTWARE)


class DoctorError(Exception):
    """An error the user can act on: printed as one line, never as a traceback."""

    exit_code = EXIT_USAGE


class UsageError(DoctorError):
    exit_code = EXIT_USAGE


class ProfileError(DoctorError):
    """A profile that cannot be read or does not follow the schema; the message names file and line."""

    exit_code = EXIT_USAGE


class ProbeError(DoctorError):
    """A probe subprocess that could not run, timed out, or answered something other than JSON."""

    exit_code = EXIT_COULD_NOT_RUN
