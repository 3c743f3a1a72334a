"""Admission that judges a FineTuneJob's author, not the operator: the chart's ValidatingAdmissionPolicies.

The operator turns a job into pods: they receive the Secret `spec.model.tokenSecretRef` names, mount
every claim the job's `pvc://` paths name, and run the image, PriorityClass, tolerations and gang size
the author chose. Left alone that makes the operator a confused deputy: a user allowed only to create
FineTuneJobs reads every Secret and claim of the namespace through it. So the API server judges the
*requesting user* before a job is stored, with two policies (CEL, admissionregistration.k8s.io/v1):

- author access (always on): the user may `get` every Secret the job names and every
  PersistentVolumeClaim it only reads, and may `update` every claim it writes (`storage.checkpoints`,
  `storage.output`: the pods mount them read-write, the export replaces folders there and pruning
  deletes; the built-in `view` role grants `get` on every claim, `edit` grants `update`), asked of the
  cluster's own authorizer (RBAC), so a job can never reach more than its author could directly;
- platform (kubetune.api.platform_policy): image prefixes, PriorityClasses, toleration and nodeSelector
  keys, and the largest gang, from the platform policy ConfigMap (the policy's parameter object).

Each rule is written once in CEL, which the chart ships (files/admission.yaml, `make generate`), and
once in Python beside it (here for author access, platform_rules.py for the platform limits, which
`kubetune validate --policy` runs); test_admission.py compares both on one table of cases, messages
included. Every refusal names the field and the rule.

Updates are judged only when they change the spec beyond `suspend` (matchConditions): the operator's own
metadata patches, and a user who suspends or resumes a job, need no access to its Secrets; an update
that changes anything else is judged in full, so nobody swaps the image of a job that holds another
user's Secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune.api.cel_text import Spec, has_chain, literal, value_at
from kubetune.api.job import GROUP, PLURAL, VERSION, FineTuneJobSpec
from kubetune.api.platform_rules import PLATFORM_RULES, PLATFORM_VARIABLES, WELL_FORMED

#: The fields that may change without a judgement: suspending and resuming hand nobody anything new.
UNJUDGED_FIELDS = frozenset({"suspend"})


# -- author access: the authorizer, asked about the requesting user ---------------------------------------


@dataclass(frozen=True)
class AccessRule:
    """One place of the spec that names an object of the job's namespace its author must be allowed to get
    (or, for a claim the job writes, to update): a SecretKeyRef (the name is `.name`) or a `pvc://claim/path`
    (the name is the claim)."""

    path: tuple[str, ...]
    """Wire path under `spec`."""
    claim: bool
    writes: bool = False
    """The pods write into the claim (mounted read-write; the export replaces folders, pruning deletes): its
    author must be allowed to `update` it, not only to `get` it as the `view` role allows on every claim."""

    @property
    def field(self) -> str:
        return "spec." + ".".join(self.path)

    @property
    def verb(self) -> str:
        return "update" if self.writes else "get"

    @property
    def rule(self) -> str:
        return f"author-may-{self.verb}-claims" if self.claim else "author-may-get-secrets"

    @property
    def kind(self) -> str:
        return "PersistentVolumeClaim" if self.claim else "Secret"

    @property
    def resource(self) -> str:
        return "persistentvolumeclaims" if self.claim else "secrets"

    @property
    def why(self) -> str:
        if self.writes:
            return "the pods of the job would mount it read-write and write into it (checkpoints, the export, pruning)"
        return "the pods of the job would mount it" if self.claim else "the pods of the job would receive its keys"

    def name_in(self, spec: Spec) -> str | None:
        """The object's name this place of `spec` refers to; None when it names none."""
        value = value_at(spec, self.path)
        if self.claim:
            return value.split("/")[2] if isinstance(value, str) and value.startswith("pvc://") else None
        return str(value["name"]) if isinstance(value, Mapping) and "name" in value else None

    def _cel_value(self) -> str:
        return "object.spec." + ".".join(self.path)

    def _cel_present(self) -> str:
        chain = has_chain(self.path)
        return f"{chain} && {self._cel_value()}.startsWith('pvc://')" if self.claim else chain

    def _cel_name(self) -> str:
        return f"{self._cel_value()}.split('/')[2]" if self.claim else f"{self._cel_value()}.name"

    def message(self, user: str, namespace: str, name: str) -> str:
        return (
            f'{self.field}: refused by rule "{self.rule}": user "{user}" may not {self.verb} {self.kind} "{name}" in '
            f'namespace "{namespace}"; {self.why}'
        )

    def validation(self) -> dict[str, str]:
        """The policy's validation: CEL, its message (the same words as `message`) and reason."""
        allowed = (
            f"authorizer.group('').resource('{self.resource}').namespace(request.namespace)"
            f".name({self._cel_name()}).check('{self.verb}').allowed()"
        )
        # the message in CEL: `message`'s own words, its three values spliced in as CEL expressions
        text = literal(self.message("\0user", "\0namespace", "\0name"))
        for marker, variable in (
            ("\0user", "request.userInfo.username"),
            ("\0namespace", "request.namespace"),
            ("\0name", self._cel_name()),
        ):
            text = text.replace(marker, f"' + {variable} + '")
        return {
            "expression": f"!({self._cel_present()}) || {allowed}",
            "messageExpression": text,
            "reason": "Forbidden",
        }

    def refusal(self, spec: Spec, user: str, namespace: str, may: Callable[[str, str, str], bool]) -> str | None:
        """The Python rule: the refusal message when `may(verb, resource, name)` says no; None to admit."""
        name = self.name_in(spec)
        if name is None or may(self.verb, self.resource, name):
            return None
        return self.message(user, namespace, name)


ACCESS_RULES: tuple[AccessRule, ...] = (
    AccessRule(("model", "tokenSecretRef"), claim=False),
    AccessRule(("evaluation", "referenceModel", "tokenSecretRef"), claim=False),
    AccessRule(("model", "source"), claim=True),
    AccessRule(("dataset", "train"), claim=True),
    AccessRule(("dataset", "validation"), claim=True),
    AccessRule(("dataset", "test"), claim=True),
    AccessRule(("storage", "checkpoints"), claim=True, writes=True),
    AccessRule(("storage", "output"), claim=True, writes=True),
    AccessRule(("evaluation", "referenceModel", "source"), claim=True),
)


def access_refusals(spec: Spec, user: str, namespace: str, may: Callable[[str, str, str], bool]) -> list[str]:
    """Every refusal of the author-access policy for `user` creating a job with `spec` in `namespace`;
    `may(verb, resource, name)` answers as the cluster's authorizer would."""
    found = (rule.refusal(spec, user, namespace, may) for rule in ACCESS_RULES)
    return [message for message in found if message is not None]


def judged_cel() -> str:
    """CEL: whether a request is judged at all: every create, and updates that change the spec beyond
    `UNJUDGED_FIELDS` (the module docstring says why)."""

    def unchanged(field: str) -> str:
        new, old = f"object.spec.{field}", f"oldObject.spec.{field}"
        return f"(has({new}) == has({old}) && (!has({new}) || {new} == {old}))"

    fields = [f.alias or n for n, f in FineTuneJobSpec.model_fields.items() if (f.alias or n) not in UNJUDGED_FIELDS]
    return f"request.operation != 'UPDATE' || !({' && '.join(unchanged(field) for field in fields)})"


def _common() -> dict[str, Any]:
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [GROUP],
                    "apiVersions": [VERSION],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [PLURAL],
                }
            ]
        },
        "matchConditions": [{"name": "created-or-spec-changed", "expression": judged_cel()}],
    }


def policy_specs() -> dict[str, dict[str, Any]]:
    """The `spec` of each ValidatingAdmissionPolicy the chart installs, by the chart's key for it."""
    return {
        "authorAccess": _common() | {"validations": [rule.validation() for rule in ACCESS_RULES]},
        "platform": _common()
        | {
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "variables": list(PLATFORM_VARIABLES),
            "validations": [WELL_FORMED, *(rule.validation() for rule in PLATFORM_RULES)],
        },
    }


def render_chart_file() -> str:
    """charts/kubetune/files/admission.yaml: the policies' specs, which templates/admission.yaml wraps."""
    header = "# Generated from src/kubetune/api/admission.py by `make generate`; do not edit by hand.\n"
    return header + yaml.safe_dump(policy_specs(), sort_keys=False, width=100_000)
