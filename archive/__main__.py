"""``python -m archive`` is the ``imaging-archive`` command."""

from archive.cli import main

# Guarded: worker processes of the parse pool import this module under another name.
if __name__ == "__main__":
    raise SystemExit(main())
