"""The YAML walker of config loading: a mapping with its path that collects problems.

Every parse step reads through a `Node`, so every problem carries its YAML path
and nothing stops at the first one; unknown keys are reported by `done()`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")
MISSING: Any = object()


class ConfigError(Exception):
    """The config has problems; `problems` lists every one as 'path: message'."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Node:
    """A YAML mapping and its path; remembers read keys so unknown keys can be reported."""

    def __init__(self, value: Any, path: str, problems: list[str]) -> None:
        self.path, self.problems, self.read = path, problems, set()
        if isinstance(value, Mapping):
            self.value = value
        else:
            self.value = {}
            problems.append(f"{path or '(top level)'}: must be a mapping")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, parse: Callable[[Any], T], default: Any = MISSING) -> T | None:
        """Parse `key`; a missing key is a problem unless a default is given."""
        self.read.add(key)
        raw = self.value.get(key)
        if raw is None or raw == "":  # `${VAR:-}` is how an optional value is left unset
            raw = None
        if raw is None:
            if default is MISSING:
                # Already reported when its ${VAR} was not set: one problem per mistake.
                if not any(p.startswith(f"{self.at(key)}: environment variable") for p in self.problems):
                    self.problems.append(f"{self.at(key)}: required")
                return None
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            self.problems.append(f"{self.at(key)}: {exc}")
            return None

    def child(self, key: str, required: bool = False) -> "Node | None":
        self.read.add(key)
        if self.value.get(key) is None:
            if required:
                self.problems.append(f"{self.at(key)}: required")
            return None
        return Node(self.value[key], self.at(key), self.problems)

    def done(self) -> None:
        for key in self.value:
            if key not in self.read:
                self.problems.append(f"{self.at(str(key))}: unknown key")
