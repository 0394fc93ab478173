"""Who may use which DIMSE service: the ``[dimse.allow]`` lists of calling AE titles."""

from __future__ import annotations

from dataclasses import dataclass

SERVICES = ("store", "query", "retrieve")


@dataclass(frozen=True)
class Caller:
    ae_title: str
    host: str


class AccessPolicy:
    """Entries are ``AE`` (from any host) or ``AE@host``; an empty list admits every caller."""

    def __init__(self, allow: dict[str, list[str]]) -> None:
        self._rules: dict[str, list[tuple[str, str | None]]] = {}
        for service in SERVICES:
            rules = []
            for entry in allow.get(service, []):
                ae, _, host = entry.partition("@")
                rules.append((ae.strip(), host.strip() or None))
            self._rules[service] = rules

    def open_services(self) -> list[str]:
        """Services with no list, i.e. open to every caller."""
        return [s for s in SERVICES if not self._rules[s]]

    def allows(self, service: str, caller: Caller) -> bool:
        rules = self._rules[service]
        if not rules:
            return True
        ae = caller.ae_title.strip()
        return any(ae == r_ae and (r_host is None or r_host == caller.host) for r_ae, r_host in rules)

    def association_ae_titles(self) -> list[str] | None:
        """AE titles to require at association time, or None when some service is open."""
        if self.open_services():
            return None
        return sorted({ae for rules in self._rules.values() for ae, _ in rules})
