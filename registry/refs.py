"""Model names, aliases and references (``NAME``, ``NAME:VERSION``, ``NAME@ALIAS``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from preimage.registry.errors import InvalidAliasError, InvalidModelNameError, InvalidModelRefError

__all__ = ["ALIAS_PATTERN", "NAME_PATTERN", "ModelRef", "check_alias", "check_name"]

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
"""What a model name must match, in full."""

# An alias must start with a letter, so it can never be read as a version number.
ALIAS_PATTERN = r"[a-z][a-z0-9_-]{0,31}"
"""What an alias must match, in full."""

_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`InvalidModelNameError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidModelNameError(str(name), NAME_PATTERN)
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias, else raise :class:`InvalidAliasError`."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidAliasError(str(alias), ALIAS_PATTERN)
    return alias


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: a name and at most one of a version or an alias.

    Example:
        >>> ModelRef.parse("difficulty:3")
        ModelRef(name='difficulty', version=3, alias=None)
        >>> str(ModelRef.parse("difficulty@prod"))
        'difficulty@prod'
    """

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``.

        Raises:
            InvalidModelRefError: The text is none of the three forms, or its parts are malformed.
        """
        if not isinstance(text, str) or not text:
            raise InvalidModelRefError(str(text), "it is empty")
        if ":" in text and "@" in text:
            raise InvalidModelRefError(text, "it has both a version and an alias")
        name, sep, rest = text.partition(":") if ":" in text else text.partition("@")
        if not _NAME.fullmatch(name):
            raise InvalidModelRefError(text, f"the name {name!r} must match {NAME_PATTERN}")
        if not sep:
            return cls(name)
        if sep == ":":
            if not _VERSION.fullmatch(rest):
                raise InvalidModelRefError(text, f"the version {rest!r} is not a whole number from 1")
            return cls(name, version=int(rest))
        if not _ALIAS.fullmatch(rest):
            raise InvalidModelRefError(text, f"the alias {rest!r} must match {ALIAS_PATTERN}")
        return cls(name, alias=rest)

    @classmethod
    def of(cls, ref: str | ModelRef) -> ModelRef:
        """``ref`` itself when already parsed, else :meth:`parse` of it."""
        return ref if isinstance(ref, ModelRef) else cls.parse(ref)

    @property
    def bare(self) -> bool:
        """Whether the reference is a bare name (the latest version)."""
        return self.version is None and self.alias is None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name
