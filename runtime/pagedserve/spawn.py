"""Starting helper processes with multiprocessing's 'spawn' from any process of ours."""
from __future__ import annotations

import multiprocessing as mp
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def spawn_children() -> Iterator[None]:
    """Around ``Process.start()`` of a spawned helper process (tensor-parallel ranks, the GGUF
    conversion):

    * the engine-core process is a daemonic multiprocessing child, and those may not start
      processes: lift the flag (the ranks are tied to it by their watchdog instead);
    * 'spawn' re-imports the ``__main__`` script in each child unless it cannot find it: hide it
      (the targets live in this package), so a user's script without an
      ``if __name__ == "__main__":`` guard neither fails nor runs twice."""
    cur = mp.current_process()
    daemon = cur._config.get("daemon")  # type: ignore[attr-defined]
    cur._config["daemon"] = False  # type: ignore[attr-defined]
    main = sys.modules.get("__main__")
    hidden = {}
    if main is not None:
        for attr in ("__spec__", "__file__"):
            if attr in vars(main):
                hidden[attr] = vars(main)[attr]
        main.__spec__ = None
        vars(main).pop("__file__", None)
    try:
        yield
    finally:
        if main is not None:
            main.__spec__ = hidden.get("__spec__")
            if "__file__" in hidden:
                main.__file__ = hidden["__file__"]
        if daemon is not None:
            cur._config["daemon"] = daemon  # type: ignore[attr-defined]
        else:
            cur._config.pop("daemon", None)  # type: ignore[attr-defined]
