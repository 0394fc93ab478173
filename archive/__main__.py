"""``python -m archive`` is the ``imaging-archive`` command."""

from archive.cli import main

raise SystemExit(main())
