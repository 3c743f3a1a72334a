"""The platform policy: what a platform team lets every FineTuneJob of the cluster use.

A job's author chooses the trainer image, the PriorityClass, tolerations, a nodeSelector and the size of
the gang; on a cluster shared by many teams these are the platform's decisions. The policy is a plain
ConfigMap, the parameter object of the chart's ValidatingAdmissionPolicy (`<release>-kubetune-platform`,
charts/kubetune/templates/admission.yaml), so one file serves both the API server and CI pipelines:
`helm template ... -s templates/platform-policy.yaml > policy.yaml`, then
`kubetune validate --policy policy.yaml job.yaml`.

Every key of `data` is optional; a key that is absent puts no limit on its part of the spec, a key
that is present is an allow-list (an empty one allows nothing):

| key                       | value                                  | limits                               |
|---------------------------|----------------------------------------|--------------------------------------|
| `allowedImages`           | comma-separated image prefixes/digests | `spec.image` (unset: the operator's) |
| `allowedPriorityClasses`  | comma-separated names                  | `spec.scheduling.priorityClassName`  |
| `allowedTolerationKeys`   | comma-separated taint keys             | `spec.scheduling.tolerations[*].key` |
| `allowedNodeSelectorKeys` | comma-separated label keys             | `spec.scheduling.nodeSelector` keys  |
| `maxGangProcesses`        | a whole number                         | workers x processesPerWorker         |
| `maxGPUsPerJob`           | a whole number                         | workers x the accelerators of a pod  |

The accelerators of a pod (maxGPUsPerJob, every job) are `processesPerWorker` `nvidia.com/gpu` on a GPU
job plus every accelerator resource of `spec.resources`, which the operator passes into the pods as it is
(kubetune.api.platform_rules says which names count and how).

An image entry is `*` (any image), a digest `sha256:<hex>` (an image pinned to it with `@sha256:...`),
or a registry/repository prefix matched at a boundary: `ghcr.io/acme/trainer` admits `ghcr.io/acme/
trainer:1.2`, `ghcr.io/acme/trainer@sha256:...` and `ghcr.io/acme/trainer/cuda:12`, never
`ghcr.io/acme/trainer-evil`; an entry ending in `/` admits everything below it.

A key this module does not know is refused, here and by the API server: a misspelt key would
otherwise lift the limit it was meant to set without a word.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api.validation import ManifestError, closest_value, read_documents

IMAGES = "allowedImages"
PRIORITY_CLASSES = "allowedPriorityClasses"
TOLERATION_KEYS = "allowedTolerationKeys"
NODE_SELECTOR_KEYS = "allowedNodeSelectorKeys"
MAX_GANG_PROCESSES = "maxGangProcesses"
MAX_GPUS = "maxGPUsPerJob"
LIST_KEYS = (IMAGES, PRIORITY_CLASSES, TOLERATION_KEYS, NODE_SELECTOR_KEYS)
NUMBER_KEYS = (MAX_GANG_PROCESSES, MAX_GPUS)
KEYS = LIST_KEYS + NUMBER_KEYS
#: A limit's value: a whole number, at most 9 digits so that CEL's `int()` can never overflow.
NUMBER_PATTERN = r"^[0-9]{1,9}$"
#: The image entry that admits every image.
ANY_IMAGE = "*"
#: An image entry that pins a digest rather than naming a repository.
DIGEST_PREFIX = "sha256:"


class PolicyError(ManifestError):
    """A platform policy file that is not a usable policy (unreadable, not a ConfigMap, a bad key)."""


def split_list(text: str) -> list[str]:
    """A comma-separated value as its entries, blanks around them (newlines included) dropped."""
    return [entry.strip() for entry in text.split(",") if entry.strip()]


def policy_problems(data: Mapping[str, str]) -> list[str]:
    """What makes `data` (a ConfigMap's) an unusable policy, one message per key; empty when usable."""
    problems = []
    for key in sorted(set(data) - set(KEYS)):
        meant = closest_value(key, KEYS)
        hint = f"did you mean {meant!r}?" if meant else f"known keys: {', '.join(KEYS)}"
        problems.append(f"data.{key}: unknown key ({hint})")
    for key in NUMBER_KEYS:
        if key in data and not re.fullmatch(NUMBER_PATTERN, data[key]):
            problems.append(f"data.{key}: must be a whole number of at most 9 digits (got {data[key]!r})")
    return problems


@dataclass(frozen=True)
class PlatformPolicy:
    """The allow-lists and limits of a platform policy; None: the key is absent, no limit."""

    images: tuple[str, ...] | None = None
    priority_classes: tuple[str, ...] | None = None
    toleration_keys: tuple[str, ...] | None = None
    node_selector_keys: tuple[str, ...] | None = None
    max_gang_processes: int | None = None
    max_gpus: int | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, str]) -> PlatformPolicy:
        """From a ConfigMap's `data`; raises PolicyError naming every bad key."""
        problems = policy_problems(data)
        if problems:
            raise PolicyError("\n".join(problems))

        def entries(key: str) -> tuple[str, ...] | None:
            return tuple(split_list(data[key])) if key in data else None

        def number(key: str) -> int | None:
            return int(data[key]) if key in data else None

        return cls(
            images=entries(IMAGES),
            priority_classes=entries(PRIORITY_CLASSES),
            toleration_keys=entries(TOLERATION_KEYS),
            node_selector_keys=entries(NODE_SELECTOR_KEYS),
            max_gang_processes=number(MAX_GANG_PROCESSES),
            max_gpus=number(MAX_GPUS),
        )


def image_allowed(image: str, entry: str) -> bool:
    """Whether one `allowedImages` entry admits `image` (the module docstring gives the forms)."""
    if entry == ANY_IMAGE:
        return True
    if entry.startswith(DIGEST_PREFIX):
        return image.endswith("@" + entry)
    boundary = any(image.startswith(entry + separator) for separator in ("/", ":", "@"))
    return image == entry or boundary or (entry.endswith("/") and image.startswith(entry))


def _config_map_data(content: Any, source: str) -> dict[str, str]:
    if not isinstance(content, dict) or content.get("kind") != "ConfigMap":
        kind = content.get("kind") if isinstance(content, dict) else type(content).__name__
        raise PolicyError(f"{source}: expected a ConfigMap (the chart's platform policy), got {kind!r}")
    data = content.get("data") or {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: data: expected a map of keys to strings")
    wrong = sorted(key for key, value in data.items() if not isinstance(value, str))
    if wrong:
        raise PolicyError(f'{source}: data.{wrong[0]}: must be a string (quote numbers: "8")')
    return data


def load_policy(path: str) -> PlatformPolicy:
    """The policy in a file holding one ConfigMap (as `helm template` writes it); raises PolicyError
    naming the file and the key."""
    try:
        documents = list(read_documents(path))
    except ManifestError as error:
        raise PolicyError(str(error)) from error
    if len(documents) != 1:
        raise PolicyError(f"{documents[0].source}: expected one ConfigMap, found {len(documents)} documents")
    source = documents[0].source
    data = _config_map_data(documents[0].content, source)
    try:
        return PlatformPolicy.from_data(data)
    except PolicyError as error:
        raise PolicyError("\n".join(f"{source}: {line}" for line in str(error).splitlines())) from error
