"""The catalogue in the database: targets, purposes, which purpose may use which target, and the
business functions. Loaded from the data file shipped in the package (see app/catalogue)."""

from sqlalchemy import Column, ForeignKey, ForeignKeyConstraint, String
from sqlmodel import Field, SQLModel

from app.models import base as _base  # noqa: F401  (naming convention first)


class Target(SQLModel, table=True):
    __tablename__ = "target"

    key: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)  # "data" | "permission"
    name: str = Field(max_length=200)
    sensitive: bool = False
    separate_consent: bool = False
    required: bool = False
    cites: str = Field(max_length=2000)


class Purpose(SQLModel, table=True):
    __tablename__ = "purpose"

    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    legal_basis: str = Field(max_length=16)  # "contract" | "consent"
    necessary: bool = False
    separate_consent: bool = False
    cites: str = Field(max_length=2000)


class PurposeTarget(SQLModel, table=True):
    """A purpose may use a target: the only (target, purpose) pairs a consent or check may name."""

    __tablename__ = "purpose_target"

    purpose_key: str = Field(
        sa_column=Column(String(64), ForeignKey("purpose.key"), primary_key=True)
    )
    target_key: str = Field(
        sa_column=Column(String(64), ForeignKey("target.key"), primary_key=True)
    )


class BusinessFunction(SQLModel, table=True):
    __tablename__ = "business_function"

    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    cites: str = Field(max_length=2000)


class FunctionNeed(SQLModel, table=True):
    """A (target, purpose) pair a business function cannot work without."""

    __tablename__ = "function_need"
    __table_args__ = (
        ForeignKeyConstraint(
            ["purpose_key", "target_key"],
            ["purpose_target.purpose_key", "purpose_target.target_key"],
        ),
    )

    function_key: str = Field(
        sa_column=Column(String(64), ForeignKey("business_function.key"), primary_key=True)
    )
    target_key: str = Field(sa_column=Column(String(64), primary_key=True))
    purpose_key: str = Field(sa_column=Column(String(64), primary_key=True))
