"""The catalogue as clients read it."""

from typing import Literal

from pydantic import BaseModel


class TargetPublic(BaseModel):
    key: str
    kind: Literal["data", "permission"]
    name: str
    required: bool
    sensitive: bool
    separate_consent: bool
    cites: str
    inferred: str | None


class PurposePublic(BaseModel):
    key: str
    name: str
    legal_basis: Literal["contract", "consent"]
    necessary: bool
    separate_consent: bool
    targets: list[str]
    validity_days: int | None
    cites: str
    inferred: str | None


class NeedPublic(BaseModel):
    target: str
    purpose: str


class FunctionPublic(BaseModel):
    key: str
    name: str
    needs: list[NeedPublic]
    cites: str
    inferred: str | None


class CataloguePublic(BaseModel):
    targets: list[TargetPublic]
    purposes: list[PurposePublic]
    functions: list[FunctionPublic]
    policy_version: str | None
