"""DIMSE services (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) with pynetdicom: the next issue."""
