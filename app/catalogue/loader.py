"""Reads and validates the catalogue data file shipped in the package."""

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from importlib import resources
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

KEY_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=KEY_PATTERN, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    cites: str = Field(min_length=10, max_length=2000)
    inferred: str | None = None


class TargetEntry(_Entry):
    kind: Literal["data", "permission"]
    required: bool = False
    sensitive: bool = False
    separate_consent: bool = False

    @model_validator(mode="after")
    def _permission_keys(self) -> "TargetEntry":
        if (self.kind == "permission") != self.key.startswith("permission."):
            raise ValueError(
                f"{self.key}: permission targets, and only they, start with 'permission.'"
            )
        return self


class PurposeEntry(_Entry):
    legal_basis: Literal["contract", "consent"]
    necessary: bool = False
    separate_consent: bool = False
    targets: tuple[str, ...] = Field(min_length=1)
    validity_days: int | None = Field(
        default=None, ge=1, le=36500, description="A consent lapses this long after it is given."
    )

    @model_validator(mode="after")
    def _necessary_needs_contract(self) -> "PurposeEntry":
        if self.necessary and self.legal_basis != "contract":
            raise ValueError(f"{self.key}: only a contract-basis purpose can be necessary")
        return self


class Need(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    target: str
    purpose: str


class FunctionEntry(_Entry):
    needs: tuple[Need, ...] = Field(min_length=1)


class PolicySeed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(min_length=1, max_length=64)
    effective_at: AwareDatetime
    text_file: str
    summary: str


class CatalogueFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: PolicySeed
    targets: tuple[TargetEntry, ...]
    purposes: tuple[PurposeEntry, ...]
    functions: tuple[FunctionEntry, ...]

    @model_validator(mode="after")
    def _references(self) -> "CatalogueFile":
        for kind, entries in (
            ("target", self.targets),
            ("purpose", self.purposes),
            ("function", self.functions),
        ):
            keys = [e.key for e in entries]
            duplicates = sorted({k for k in keys if keys.count(k) > 1})
            if duplicates:
                raise ValueError(f"duplicate {kind} keys: {', '.join(duplicates)}")
        targets = {t.key: t for t in self.targets}
        pairs = set()
        for purpose in self.purposes:
            for target_key in purpose.targets:
                target = targets.get(target_key)
                if target is None:
                    raise ValueError(f"purpose {purpose.key} names unknown target {target_key}")
                if purpose.legal_basis == "contract" and not target.required:
                    raise ValueError(
                        f"purpose {purpose.key} is contract-based, so it may use only required "
                        f"data; {target_key} is optional and needs consent"
                    )
                pairs.add((target_key, purpose.key))
        for function in self.functions:
            for need in function.needs:
                if (need.target, need.purpose) not in pairs:
                    raise ValueError(
                        f"function {function.key} needs ({need.target}, {need.purpose}), "
                        "which no purpose allows"
                    )
        return self


@dataclass(frozen=True, slots=True)
class Pair:
    """A (target, purpose) pair the catalogue allows, with what the decision needs to know,
    worked out once: a batch check reads them for up to a hundred pairs (BENCHMARKS.md)."""

    target: TargetEntry
    purpose: PurposeEntry
    # Worked out from the two above (so left out of equality and repr):
    key: tuple[str, str] = field(init=False, compare=False, repr=False)  # as consents are keyed
    necessary: bool = field(init=False, compare=False, repr=False)  # no consent needed
    permission: bool = field(init=False, compare=False, repr=False)  # a system permission

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.target.key, self.purpose.key))
        necessary = self.purpose.legal_basis == "contract" and self.purpose.necessary
        object.__setattr__(self, "necessary", necessary)
        object.__setattr__(self, "permission", self.target.kind == "permission")


@dataclass(frozen=True)
class Catalogue:
    file: CatalogueFile
    policy_text: str
    targets: dict[str, TargetEntry] = field(init=False)
    purposes: dict[str, PurposeEntry] = field(init=False)
    pairs: dict[tuple[str, str], Pair] = field(init=False)

    def __post_init__(self) -> None:
        targets = {t.key: t for t in self.file.targets}
        purposes = {p.key: p for p in self.file.purposes}
        pairs = {(t, p.key): Pair(targets[t], p) for p in self.file.purposes for t in p.targets}
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "purposes", purposes)
        object.__setattr__(self, "pairs", pairs)

    @cached_property
    def policy_sha256(self) -> str:
        return hashlib.sha256(self.policy_text.encode()).hexdigest()

    @property
    def seed_policy_effective_at(self) -> datetime:
        return self.file.policy.effective_at


def load_catalogue() -> Catalogue:
    """Read the catalogue shipped in the package; raises ValueError if the file is inconsistent."""
    package = resources.files("app.catalogue")
    data = tomllib.loads(package.joinpath("catalogue.toml").read_text(encoding="utf-8"))
    parsed = CatalogueFile.model_validate(data)
    text = package.joinpath(parsed.policy.text_file).read_text(encoding="utf-8")
    return Catalogue(file=parsed, policy_text=text)
