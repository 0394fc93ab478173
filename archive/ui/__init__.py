"""The data explorer: a web page served at ``/`` (plain HTML, CSS and JavaScript in ``static/``)
that reads everything it shows from the archive's API, with the visitor's role (docs/explorer.md)."""
