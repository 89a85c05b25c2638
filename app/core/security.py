"""Who is calling. Every route takes the caller through ``PrincipalDep``.

Authentication (API keys with roles, subject-bound tokens) is not built yet: until it is, every
caller is the one anonymous application principal below. The ledger records the principal of each
change, so when keys arrive the actor comes from the credential without touching the services.
"""

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends

Actor = Literal["subject", "guardian", "app", "staff", "system"]


@dataclass(frozen=True)
class Principal:
    actor: Actor
    name: str

    @property
    def idempotency_scope(self) -> str:
        return f"{self.actor}:{self.name}"


ANONYMOUS_APP = Principal(actor="app", name="anonymous")


async def get_principal() -> Principal:
    return ANONYMOUS_APP


PrincipalDep = Annotated[Principal, Depends(get_principal)]
