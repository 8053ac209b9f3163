"""Tuning from Python: the database this process uses (sigattn_set_database_path) and
`sigattn tune`, the command line's auto-tuner, run as a subprocess that writes its results there.
"""

import ctypes
import os
import shutil
import subprocess

from . import _library

EXECUTABLE_VARIABLE = "SIGATTN_EXECUTABLE"
_database_path = None  # the path last given to set_database_path


def set_database_path(path):
    """Makes `path` this process's database of compiled kernels and tuning results, in place of
    $SIGATTN_DB and the default location (~/.cache/sigattn/sigattn.db); None restores those.
    tune() writes to this database unless it is given another."""
    global _database_path
    text = None if path is None else os.fspath(path)
    lib = _library.library()
    encoded = None if text is None else text.encode()
    _library.check(lib.sigattn_set_database_path(ctypes.c_char_p(encoded)),
                   "sigattn_set_database_path")
    _database_path = text or None


def set_online_tuning(enabled):
    """Online tuning on or off (default: on when $SIGATTN_ONLINE_TUNING is 1): a call served by
    the heuristic tile queues its shape for a background `sigattn tune` run into the database,
    and later calls of that shape use the winner (see the README's Tuning section)."""
    _library.check(_library.library().sigattn_set_online_tuning(1 if enabled else 0),
                   "sigattn_set_online_tuning")


def find_executable():
    """The `sigattn` command line: $SIGATTN_EXECUTABLE, else the one installed beside the loaded
    library (the build directory, or <prefix>/bin for <prefix>/lib), else the one on PATH.
    Raises SigattnError listing where it looked when there is none."""
    explicit = os.environ.get(EXECUTABLE_VARIABLE)
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise _library.SigattnError(f"{EXECUTABLE_VARIABLE}={explicit} is not an executable file")
    looked = []
    try:
        library_dir = os.path.dirname(os.path.abspath(_library.library_path()))
    except _library.SigattnError:
        library_dir = None
    if library_dir is not None:
        for candidate in (os.path.join(library_dir, "sigattn"),
                          os.path.join(library_dir, os.pardir, "bin", "sigattn")):
            candidate = os.path.normpath(candidate)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            looked.append(candidate)
    on_path = shutil.which("sigattn")
    if on_path:
        return on_path
    looked.append("PATH")
    raise _library.SigattnError(
        "the `sigattn` command line was not found; looked in: " + ", ".join(looked) + ". "
        f"Install sigattn (pip install ./python installs it inside the package; cmake --install "
        f"installs bin/sigattn), or set {EXECUTABLE_VARIABLE} to its path.")


def tune(preset=None, *, shapes=None, db=None, extra_args=(), check=True):
    """Runs `sigattn tune` on the current machine's GPU and stores the best tiles in the database.

    Args:
        preset: "quick" or "paper": the command line's built-in problem sets.
        shapes: instead of a preset, a file of problems to tune (the format `sigattn tune --help`
            describes).
        db: the database to write, default the one set by set_database_path, else the command
            line's default ($SIGATTN_DB or ~/.cache/sigattn/sigattn.db), which is also the one
            this process reads.
        extra_args: further command-line arguments, passed as they are.
        check: raise SigattnError when the command fails.

    Returns:
        the subprocess.CompletedProcess (its output goes to this process's stdout and stderr).
    """
    if (preset is None) == (shapes is None):
        raise ValueError("give exactly one of preset ('quick' or 'paper') and shapes (a file)")
    command = [find_executable(), "tune"]
    if preset is not None:
        if preset not in ("quick", "paper"):
            raise ValueError(f"preset = {preset!r} must be 'quick' or 'paper'")
        command += ["--preset", preset]
    else:
        shapes = os.fspath(shapes)
        if not os.path.isfile(shapes):
            raise ValueError(f"shapes = {shapes!r} is not a file")
        command += ["--shapes", shapes]
    database = db if db is not None else _database_path
    if database is not None:
        command += ["--db", os.fspath(database)]
    command += [str(argument) for argument in extra_args]
    completed = subprocess.run(command, check=False)
    if check and completed.returncode != 0:
        raise _library.SigattnError(
            f"`{' '.join(command)}` failed with exit code {completed.returncode}")
    return completed
