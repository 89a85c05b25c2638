from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.catalogue import service
from app.catalogue.loader import Catalogue
from app.catalogue.schemas import CataloguePublic
from app.core.db import ReadSessionDep
from app.core.security import Principal, Scope, requires


async def get_catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


CatalogueDep = Annotated[Catalogue, Depends(get_catalogue)]

router = APIRouter(prefix="/v1/catalogue", tags=["catalogue"])

ReadCatalogue = Annotated[Principal, requires(Scope.CATALOGUE_READ)]


@router.get("", operation_id="catalogue-get", response_model=CataloguePublic)
async def get_catalogue_route(
    catalogue: CatalogueDep, session: ReadSessionDep, _principal: ReadCatalogue
) -> CataloguePublic:
    """Every target, purpose and business function, each citing the policy, and the current
    policy version."""
    async with session.begin():
        version = await service.current_policy_version(session)
    file = catalogue.file
    return CataloguePublic.model_validate(
        {
            "targets": [t.model_dump() for t in file.targets],
            "purposes": [p.model_dump() for p in file.purposes],
            "functions": [f.model_dump() for f in file.functions],
            "policy_version": version,
        }
    )
