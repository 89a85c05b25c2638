"""The shipped catalogue file is complete and consistent; bad files are refused."""

import copy
import tomllib
from importlib import resources
from typing import Any

import pytest
from pydantic import ValidationError

from app.catalogue.loader import CatalogueFile, load_catalogue

DESIGN_TARGETS = {
    "email", "skin_condition", "gender", "age",
    "device.imei", "device.mac", "device.serial", "device.imsi", "device.model",
    "device.os_version", "device.client_version", "device.resolution", "device.package_name",
    "device.settings", "device.process_list", "device.unique_id", "device.features",
    "permission.contacts", "permission.location", "permission.camera", "permission.microphone",
    "permission.album", "permission.files", "permission.network_status",
}  # fmt: skip


def _raw() -> dict[str, Any]:
    text = resources.files("app.catalogue").joinpath("catalogue.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def test_every_target_the_policy_names_is_in_the_catalogue() -> None:
    catalogue = load_catalogue()
    assert set(catalogue.targets) == DESIGN_TARGETS
    assert catalogue.targets["skin_condition"].sensitive
    assert catalogue.targets["permission.location"].sensitive
    assert catalogue.purposes["third_party_sharing"].separate_consent
    assert catalogue.purposes["cross_border_transfer"].separate_consent


def test_every_citation_is_a_sentence_of_the_policy() -> None:
    catalogue = load_catalogue()
    policy = " ".join(catalogue.policy_text.split())
    entries = [*catalogue.file.targets, *catalogue.file.purposes, *catalogue.file.functions]
    for entry in entries:
        for fragment in entry.cites.split("..."):
            fragment = " ".join(fragment.split()).strip(" ,.;")
            assert fragment in policy, f"{entry.key}: {fragment!r} is not in the policy"


def test_only_required_data_can_be_processed_without_consent() -> None:
    catalogue = load_catalogue()
    for pair in catalogue.pairs.values():
        if pair.necessary:
            assert pair.target.required, pair


def _mutated(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(_raw())
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["purposes"][0]["targets"].append("nope"), "unknown target"),
        (lambda d: d["targets"].append(dict(d["targets"][0])), "duplicate target"),
        (lambda d: d["functions"][0]["needs"].append({"target": "age", "purpose": "usb_backup"}), "which no purpose allows"),
        (lambda d: d["purposes"][0]["targets"].append("gender"), "only required data"),
        (lambda d: d["purposes"][2].update(necessary=True), "only a contract-basis purpose"),
        (lambda d: d["targets"][0].update(kind="permission"), "start with 'permission.'"),
        (lambda d: d["targets"][0].pop("cites"), "cites"),
    ],
)  # fmt: skip
def test_an_inconsistent_catalogue_is_refused(change: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CatalogueFile.model_validate(_mutated(change))
