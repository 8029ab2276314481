"""Process settings shared by the ``sia`` commands: CPU threads and library noise.

``add_runtime_args(parser)`` adds ``--threads`` and ``--verbose``; ``apply_runtime_args(args)``
applies them before any model is loaded.

Thread policy (README, "Threads"): ``--threads auto`` (the default) is half the CPUs this process
may run on, at least 1 and at most 8: 1 on a 2-core machine, 8 on a 16-core one. OpenMP threads
spin while they wait for each other, so a thread count equal to the core count collapses as soon
as anything else runs on the machine (on a busy 2-core machine 2 threads decoded ~100x slower than
1); half the cores keeps most of the matmul speed-up on an idle machine without that cliff. The
count sets torch's intra-op pool, which is also what the C++ scan op is given.
"""
from __future__ import annotations

import argparse
import contextlib
import os

__all__ = ["add_runtime_args", "apply_runtime_args", "default_threads", "threads_arg", "quiet_libraries",
           "HelpFormatter", "looks_like_path", "check_model_arg", "resolve_device", "one_line", "Terminated",
           "stop_on_sigterm", "restore_sigterm"]

MAX_AUTO_THREADS = 8


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """What ``--threads auto`` means on this machine: ``clamp(cpus // 2, 1, 8)``."""
    return max(1, min(MAX_AUTO_THREADS, _cpus() // 2))


def threads_arg(text: str) -> int:
    """argparse type of ``--threads``: ``auto`` or an integer >= 1."""
    t = text.strip().lower()
    if t == "auto":
        return default_threads()
    try:
        n = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}")
    return n


def add_runtime_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--threads N|auto`` and ``--verbose`` to ``parser`` (an ArgumentParser or group)."""
    if not hasattr(parser, "add_argument"):
        raise TypeError(f"parser must be an argparse parser or argument group, got {type(parser).__name__}")
    parser.add_argument("--threads", type=threads_arg, default="auto", metavar="N|auto",
                        help=f"CPU threads for torch and the C++ scan; auto = half the CPUs, 1..{MAX_AUTO_THREADS} "
                             f"(here: {default_threads()})")
    parser.add_argument("--verbose", action="store_true",
                        help="show library progress bars, logs and warnings (hidden by default)")
    return parser


def quiet_libraries() -> None:
    """Hide Hugging Face progress bars ("Loading weights"), info logs and library warnings
    (FutureWarning, DeprecationWarning, UserWarning). Our own progress bars are unaffected."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("transformers", "huggingface_hub", "peft", "accelerate", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars
        from huggingface_hub.utils import logging as hub_logging

        disable_progress_bars()
        hub_logging.set_verbosity_error()  # its import resets the level set above
    except ImportError:
        pass


def apply_runtime_args(args: argparse.Namespace) -> None:
    """Set torch's threads (intra-op; OpenMP, which the C++ scan uses) to ``args.threads`` and,
    unless ``args.verbose``, silence library noise. Call it before loading models."""
    threads = getattr(args, "threads", None)
    if threads is None or threads == "auto":
        threads = default_threads()
    if isinstance(threads, str):
        threads = threads_arg(threads)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be an integer >= 1 or 'auto', got {threads!r}")
    import torch

    torch.set_num_threads(threads)  # also omp_set_num_threads: the C++ scan runs on this pool
    os.environ["OMP_NUM_THREADS"] = str(threads)  # for subprocesses (e.g. first-use compiler runs)
    args.threads = threads
    if not getattr(args, "verbose", False):
        quiet_libraries()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default, except where the help text already states it
    or there is nothing to show (a flag that is off, a default of None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or hidden or not action.option_strings:
            return text
        return text + " (default: %(default)s)" if text else "default: %(default)s"


def looks_like_path(name: str) -> bool:
    """Whether a ``--model``-style argument names a local path rather than a Hub id: it exists,
    is absolute, starts with ``.`` or ``~``, ends with a separator, has more than one separator (a
    Hub id has at most one: ``org/name``), or its first component is an existing local directory."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    norm = name.replace(os.altsep, os.sep) if os.altsep else name
    parts = norm.split(os.sep)
    return (os.path.exists(norm) or os.path.isabs(norm) or norm.startswith((".", "~")) or norm.endswith(os.sep)
            or len(parts) > 2 or (len(parts) == 2 and os.path.isdir(parts[0])))


def check_model_arg(name: str | None, flag: str) -> str | None:
    """``name`` with ``~`` expanded when it is a local path; a path-like name that does not exist
    is a FileNotFoundError naming ``flag`` (it is never looked up on the Hub). ``None`` passes."""
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{flag} must be a path or a Hub id, got {name!r}")
    if not looks_like_path(name):
        return name  # a Hub id
    path = os.path.expanduser(name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag} {name}: no such file or directory")
    return path


def resolve_device(device: str | None, flag: str = "--device"):
    """``device`` as a torch.device (None: cuda if available, else cpu); asking for CUDA where
    there is none is a ValueError naming ``flag``."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{flag} {device!r}: not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(f"{flag} {device}: this torch ({torch.__version__}) was built without CUDA")
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device}: no CUDA device is visible")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise ValueError(f"{flag} {device}: only cpu and cuda are supported")
    return dev


def one_line(error: BaseException) -> str:
    """An exception's message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(error).split()) or type(error).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it stops a command the way Ctrl-C does."""


def stop_on_sigterm():
    """From now on SIGTERM raises ``Terminated`` (a KeyboardInterrupt) in the main thread.
    Returns the previous handler for ``restore_sigterm`` (None outside the main thread, where
    nothing is changed)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    return signal.signal(signal.SIGTERM, _raise)


def restore_sigterm(previous) -> None:
    """Put back the SIGTERM handler ``stop_on_sigterm`` returned (None: leave it)."""
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held():
    """Hold SIGINT and SIGTERM for the ``with`` block: one that arrives meanwhile is raised again,
    with the handler it had before, when the block ends. A batch's output rows are written inside
    it, so a signal never keeps one finished row of a batch and loses the next. Outside the main
    thread (where handlers cannot be set) nothing is held."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        if caught:
            signal.raise_signal(caught[0])
