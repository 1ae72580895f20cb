"""Print the path one training batch takes from the ``pure-prune`` command to the compiled step.

``python docs/batch_path.py [ROOT]`` runs a two-round IMP run of the digits MLP (eager, one
epoch, in a temporary directory) through ``pure-prune run``'s ``main`` in this process, stops the
first time the library's train step (``checked_step``, the function ``train.make_step`` returns)
is called, and prints the Python frames between the command's ``main`` and that call that lie in
``pure_prune`` (file, line, function), then their count and the number of files. ``ROOT``: another
checkout to measure (e.g. a worktree of an older commit), put first on ``sys.path``.
``docs/architecture.md`` quotes its output for the commit before the layering work and today.
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path


class Found(Exception):
    """Raised inside the step to unwind once the stack is recorded."""


def main(argv: list[str]) -> int:
    root = Path(argv[0]).resolve() if argv else Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    # an editable install's finder would import this checkout's package whatever the path says
    sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    if (root / "pure_prune" / "cli.py").is_file():  # before the application moved to pure_prune/app
        from pure_prune import cli
    else:
        from pure_prune.app import cli
    frames: list[traceback.FrameSummary] = []

    def profile(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if event == "call" and frame.f_code.co_name == "checked_step" and not frames:
            frames.extend(traceback.extract_stack(frame))
            raise Found

    with tempfile.TemporaryDirectory() as tmp:
        argv_run = ["run", "--method", "imp", "--model", "mlp", "--data", "digits", "--epochs", "1"]
        argv_run += ["--pruning-times", "1", "--eager", "--no-progress", "--save-dir", f"{tmp}/run"]
        sys.setprofile(profile)
        try:
            cli.main(argv_run)
        except (Found, SystemExit):
            pass
        finally:
            sys.setprofile(None)
    start = next(i for i, f in enumerate(frames) if f.name == "main" and "pure_prune" in f.filename)
    ours = [f for f in frames[start:] if f"{root}/pure_prune" in f.filename]
    for f in ours:
        print(f"{Path(f.filename).relative_to(root)}:{f.lineno} {f.name}")
    files = {f.filename for f in ours}
    print(f"{len(ours)} frames across {len(files)} files from the command's main to the train step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
