"""The platform policy's rules: each limit of kubetune.api.platform_policy in CEL, for the chart's platform
ValidatingAdmissionPolicy (the ConfigMap is its `params`), and in Python, for `kubetune validate --policy`.

A rule's CEL is true when the job is admitted; its message (CEL, and the same words from its Python
check) names the field and the rule: `spec.image: refused by rule "allowed-images": ...`. The variables
parse the ConfigMap's comma-separated lists once per request. A limit that is not a whole number never
makes a rule fail to evaluate: the first validation, WELL_FORMED, refuses every job while the policy is
malformed (failing closed, where a misspelt key would otherwise lift its limit silently).
src/kubetune/api/test_admission.py runs both languages on one table of cases.

maxGPUsPerJob counts every accelerator a worker pod gets, for every job: the operator passes
`spec.resources` into each pod as it is (operator builders.py `_resources`), so a job with
`accelerator: cpu` and `limits: {nvidia.com/gpu: 64}` gets 64 GPUs per pod. A pod's count is
processesPerWorker `nvidia.com/gpu` on a GPU job (the builder sets that resource itself, over whatever
spec.resources says), plus each accelerator resource of spec.resources (ACCELERATOR_PREFIXES, or a name
holding `gpu`), the larger of its limit and request. A fraction (which Kubernetes refuses for an extended
resource anyway) counts as the next whole number, and anything above COUNT_CAP as COUNT_CAP, which is above
every limit a policy can hold, so that CEL's int64 never overflows (at most 256 workers x (16 + 128 x
COUNT_CAP)). The API server may list the resources of a refusal in another order (CEL maps are unordered).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubetune.api import platform_policy as keys
from kubetune.api.cel_text import Spec, has_chain, literal, value_at
from kubetune.api.job import FineTuneJob
from kubetune.api.kubernetes_syntax import quantity_value
from kubetune.api.platform_policy import NUMBER_PATTERN, PlatformPolicy, image_allowed
from kubetune.api.validation import Document, ManifestError, Problem, line_in, read_documents, validate_document

#: How a list of allowed values reads in a message when it is empty.
NONE_ALLOWED = "none"
#: What a keyless toleration is called in a refusal.
KEYLESS_TOLERATION = "a toleration without a key (it tolerates every taint)"


def _listed(entries: tuple[str, ...] | list[str]) -> str:
    return ", ".join(entries) if entries else NONE_ALLOWED


def _cel_listed(variable: str) -> str:
    return f"(size({variable}) == 0 ? {literal(NONE_ALLOWED)} : {variable}.join(', '))"


def _distributed(spec: Spec, field: str) -> int:
    value = value_at(spec, ("distributed", field))
    return int(value) if value is not None else 1


def _gpu_job(spec: Spec) -> bool:
    return value_at(spec, ("distributed", "accelerator")) in (None, "nvidia-gpu")


#: Extended resources that are accelerators: NVIDIA (`nvidia.com/gpu`, `nvidia.com/mig-*`, `nvidia.com/gpu.shared`),
#: AMD, Intel Gaudi (`habana.ai/gaudi`) and Intel's device plugins, Google TPUs, AWS Trainium/Inferentia; and any
#: name holding ACCELERATOR_WORD (`gpu.intel.com/i915`). Counting a non-accelerator of these domains only makes the
#: limit stricter; an accelerator of another vendor needs its name added here.
ACCELERATOR_PREFIXES = ("nvidia.com/", "amd.com/", "habana.ai/", "intel.com/", "google.com/tpu", "aws.amazon.com/")
ACCELERATOR_WORD = "gpu"
#: The resource the operator sets on a GPU job's pods itself: processesPerWorker of it, over spec.resources.
BUILDER_GPU = "nvidia.com/gpu"
#: A count above every limit a policy can hold (NUMBER_PATTERN: 9 digits); larger quantities count as it.
COUNT_CAP = 10**9


def is_accelerator(name: str) -> bool:
    """Whether a resource of spec.resources counts toward maxGPUsPerJob (resource names are lower case)."""
    return ACCELERATOR_WORD in name or name.startswith(ACCELERATOR_PREFIXES)


def _whole(value: int | str) -> int:
    """How many of a resource a quantity asks for: a fraction up to the next whole number, at most COUNT_CAP."""
    number = quantity_value(value)
    if number is None:  # the API refuses it before any policy runs
        return COUNT_CAP
    if number > COUNT_CAP:
        return COUNT_CAP
    if number == number.to_integral_value():
        return int(number)
    return int(float(number)) + 1


def _accelerators(spec: Spec) -> list[tuple[str, int]]:
    """(name, count per pod) of every accelerator resource of spec.resources that reaches the pods."""
    limits = value_at(spec, ("resources", "limits")) or {}
    requests = value_at(spec, ("resources", "requests")) or {}
    gpu_job = _gpu_job(spec)

    def counted(name: str) -> bool:
        return is_accelerator(name) and not (gpu_job and name == BUILDER_GPU)

    names = [n for n in limits if counted(n)] + [n for n in requests if counted(n) and n not in limits]
    return [(n, max(_whole(limits[n]) if n in limits else 0, _whole(requests[n]) if n in requests else 0))
            for n in names]  # fmt: skip


def _gpus_per_worker(spec: Spec) -> tuple[int, list[str]]:
    """The accelerators of one worker pod, and what they are (for the message)."""
    parts = (
        [(_distributed(spec, "processesPerWorker"), f"{BUILDER_GPU} (processesPerWorker)")] if _gpu_job(spec) else []
    )
    parts += [(count, f"{name} (spec.resources)") for name, count in _accelerators(spec)]
    return sum(count for count, _ in parts), [f"{count} {what}" for count, what in parts]


def _scheduling(spec: Spec, field: str) -> Any:
    return value_at(spec, ("scheduling", field))


def _image_refusal(spec: Spec, policy: PlatformPolicy) -> str | None:
    image = spec.get("image")
    if image is None or policy.images is None or any(image_allowed(image, e) for e in policy.images):
        return None
    return f'image "{image}" matches no allowedImages entry of the platform policy ({_listed(policy.images)})'


def _priority_refusal(spec: Spec, policy: PlatformPolicy) -> str | None:
    name = _scheduling(spec, "priorityClassName")
    if name is None or policy.priority_classes is None or name in policy.priority_classes:
        return None
    allowed = _listed(policy.priority_classes)
    return f'PriorityClass "{name}" is not in the allowedPriorityClasses of the platform policy ({allowed})'


def _toleration_refusal(spec: Spec, policy: PlatformPolicy) -> str | None:
    tolerations = _scheduling(spec, "tolerations")
    allowed = policy.toleration_keys
    if tolerations is None or allowed is None:
        return None
    bad = [t for t in tolerations if not t.get("key") or t["key"] not in allowed]
    if not bad:
        return None
    named = ", ".join(f'"{t["key"]}"' if t.get("key") else KEYLESS_TOLERATION for t in bad)
    return f"toleration keys outside the allowedTolerationKeys of the platform policy ({_listed(allowed)}): {named}"


def _node_selector_refusal(spec: Spec, policy: PlatformPolicy) -> str | None:
    selector = _scheduling(spec, "nodeSelector")
    allowed = policy.node_selector_keys
    if selector is None or allowed is None:
        return None
    bad = [key for key in selector if key not in allowed]
    if not bad:
        return None
    named = ", ".join(f'"{key}"' for key in bad)
    return f"nodeSelector keys outside the allowedNodeSelectorKeys of the platform policy ({_listed(allowed)}): {named}"


def _gang_refusal(spec: Spec, policy: PlatformPolicy) -> str | None:
    workers, per_worker = _distributed(spec, "workers"), _distributed(spec, "processesPerWorker")
    if policy.max_gang_processes is None or workers * per_worker <= policy.max_gang_processes:
        return None
    return (
        f"{workers} workers x {per_worker} processes per worker = {workers * per_worker} processes, above the "
        f"maxGangProcesses of the platform policy ({policy.max_gang_processes})"
    )


def _gpu_refusal(spec: Spec, policy: PlatformPolicy) -> str | None:
    workers, (per_worker, parts) = _distributed(spec, "workers"), _gpus_per_worker(spec)
    if policy.max_gpus is None or workers * per_worker <= policy.max_gpus:
        return None
    return (
        f"{workers} workers x {per_worker} GPUs per worker = {workers * per_worker} GPUs, above the "
        f"maxGPUsPerJob of the platform policy ({policy.max_gpus}); per worker: {', '.join(parts)}"
    )


@dataclass(frozen=True)
class PlatformRule:
    """One limit of the platform policy, in CEL (true admits) and in Python (a message refuses)."""

    rule: str
    field: str
    cel: str
    message_cel: str
    """CEL for the message after `<field>: refused by rule "<rule>": `, the same words as `check`'s."""
    check: Callable[[Spec, PlatformPolicy], str | None]

    def refusal(self, spec: Spec, policy: PlatformPolicy) -> str | None:
        text = self.check(spec, policy)
        return None if text is None else f'{self.field}: refused by rule "{self.rule}": {text}'

    def validation(self) -> dict[str, str]:
        prefix = literal(f'{self.field}: refused by rule "{self.rule}": ')
        return {"expression": self.cel, "messageExpression": f"{prefix} + {self.message_cel}", "reason": "Invalid"}


def _in_policy(key: str) -> str:
    return f"{literal(key)} in variables.policy"


def _number_ok(key: str) -> str:
    """CEL: the limit `key` is set and a whole number (a malformed one is the well-formed rule's refusal)."""
    return f"{_in_policy(key)} && variables.policy.{key}.matches('{NUMBER_PATTERN}')"


_IMAGE = "object.spec.image"
_SCHEDULING = "object.spec.scheduling"
_IMAGE_MATCH = (
    f"e == '{keys.ANY_IMAGE}' || (e.startsWith('{keys.DIGEST_PREFIX}') ? {_IMAGE}.endsWith('@' + e) : "
    f"({_IMAGE} == e || {_IMAGE}.startsWith(e + '/') || {_IMAGE}.startsWith(e + ':') || "
    f"{_IMAGE}.startsWith(e + '@') || (e.endsWith('/') && {_IMAGE}.startsWith(e))))"
)
_BAD_TOLERATIONS = f"{_SCHEDULING}.tolerations.filter(t, !has(t.key) || !(t.key in variables.tolerationKeys))"
_BAD_SELECTOR_KEYS = f"{_SCHEDULING}.nodeSelector.filter(k, !(k in variables.nodeSelectorKeys))"
_GANG = (
    "string(variables.workers) + ' workers x ' + string(variables.{per}) + ' {unit} per worker = ' + "
    "string(variables.{total}) + ' {unit}, above the {key} of the platform policy (' + variables.policy.{key} + ')'"
)


def _cel_whole(value: str) -> str:
    """CEL for `_whole`: the count a quantity (int or string) asks for."""
    cap, quantity = str(COUNT_CAP), f"quantity({value})"  # a string in its branch
    return (
        f"int(type({value}) == int ? ({value} > {cap} ? {cap} : {value}) : "
        f"({quantity}.compareTo(quantity('{cap}')) > 0 ? {cap} : "
        f"({quantity}.isInteger() ? {quantity}.asInteger() : int({quantity}.asApproximateFloat()) + 1)))"
    )


def _cel_count(name: str) -> str:
    """CEL for one resource's count in `_accelerators`: the larger of its limit's and its request's."""
    counts = (
        f"({name} in variables.{side} ? {_cel_whole(f'variables.{side}[{name}]')} : 0)"
        for side in ("limits", "requests")
    )
    return f"[{', '.join(counts)}].max()"


_GPU_PARTS = (
    f"(variables.gpuJob ? [string(variables.processesPerWorker) + ' {BUILDER_GPU} (processesPerWorker)'] : []) + "
    f"variables.acceleratorNames.map(k, string({_cel_count('k')}) + ' ' + k + ' (spec.resources)')"
)

PLATFORM_RULES: tuple[PlatformRule, ...] = (
    PlatformRule(
        "allowed-images",
        "spec.image",
        f"!has({_IMAGE}) || !({_in_policy(keys.IMAGES)}) || variables.images.exists(e, {_IMAGE_MATCH})",
        f"'image \"' + {_IMAGE} + '\" matches no allowedImages entry of the platform policy (' + "
        f"{_cel_listed('variables.images')} + ')'",
        _image_refusal,
    ),
    PlatformRule(
        "allowed-priority-classes",
        "spec.scheduling.priorityClassName",
        f"!({has_chain(('scheduling', 'priorityClassName'))}) || !({_in_policy(keys.PRIORITY_CLASSES)}) || "
        f"{_SCHEDULING}.priorityClassName in variables.priorityClasses",
        f"'PriorityClass \"' + {_SCHEDULING}.priorityClassName + '\" is not in the allowedPriorityClasses of the "
        f"platform policy (' + {_cel_listed('variables.priorityClasses')} + ')'",
        _priority_refusal,
    ),
    PlatformRule(
        "allowed-toleration-keys",
        "spec.scheduling.tolerations",
        f"!({has_chain(('scheduling', 'tolerations'))}) || !({_in_policy(keys.TOLERATION_KEYS)}) || "
        f"{_SCHEDULING}.tolerations.all(t, has(t.key) && t.key in variables.tolerationKeys)",
        f"'toleration keys outside the allowedTolerationKeys of the platform policy (' + "
        f"{_cel_listed('variables.tolerationKeys')} + '): ' + {_BAD_TOLERATIONS}.map(t, has(t.key) && t.key != '' ? "
        f"'\"' + t.key + '\"' : {literal(KEYLESS_TOLERATION)}).join(', ')",
        _toleration_refusal,
    ),
    PlatformRule(
        "allowed-node-selector-keys",
        "spec.scheduling.nodeSelector",
        f"!({has_chain(('scheduling', 'nodeSelector'))}) || !({_in_policy(keys.NODE_SELECTOR_KEYS)}) || "
        f"{_SCHEDULING}.nodeSelector.all(k, k in variables.nodeSelectorKeys)",
        f"'nodeSelector keys outside the allowedNodeSelectorKeys of the platform policy (' + "
        f"{_cel_listed('variables.nodeSelectorKeys')} + '): ' + {_BAD_SELECTOR_KEYS}.map(k, '\"' + k + '\"').join(', ')",
        _node_selector_refusal,
    ),
    PlatformRule(
        "max-gang-processes",
        "spec.distributed.workers",
        f"!({_number_ok(keys.MAX_GANG_PROCESSES)}) || "
        f"variables.gangProcesses <= int(variables.policy.{keys.MAX_GANG_PROCESSES})",
        _GANG.format(unit="processes", key=keys.MAX_GANG_PROCESSES, per="processesPerWorker", total="gangProcesses"),
        _gang_refusal,
    ),
    PlatformRule(
        "max-gpus-per-job",
        "spec.distributed.workers",
        f"!({_number_ok(keys.MAX_GPUS)}) || variables.gpus <= int(variables.policy.{keys.MAX_GPUS})",
        _GANG.format(unit="GPUs", key=keys.MAX_GPUS, per="gpusPerWorker", total="gpus")
        + f" + '; per worker: ' + ({_GPU_PARTS}).join(', ')",
        _gpu_refusal,
    ),
)


def platform_refusals(spec: Spec, policy: PlatformPolicy) -> list[str]:
    """Every refusal of the platform policy for a job with `spec` (what `kubetune validate --policy` says)."""
    found = (rule.refusal(spec, policy) for rule in PLATFORM_RULES)
    return [message for message in found if message is not None]


def _list_variable(name: str, key: str) -> dict[str, str]:
    return {
        "name": name,
        "expression": f"{_in_policy(key)} ? variables.policy.{key}.split(',').map(e, e.trim()).filter(e, e != '') : []",
    }


def _distributed_variable(name: str, field: str) -> dict[str, str]:
    has = has_chain(("distributed", field))
    return {"name": name, "expression": f"{has} ? object.spec.distributed.{field} : 1"}


#: CEL for `is_accelerator(k)` and not the resource the operator sets itself on a GPU job (`_accelerators`).
_CEL_COUNTED = (
    f"(k.contains({literal(ACCELERATOR_WORD)}) || [{', '.join(literal(p) for p in ACCELERATOR_PREFIXES)}]"
    f".exists(p, k.startsWith(p))) && !(variables.gpuJob && k == {literal(BUILDER_GPU)})"
)

#: The platform policy's CEL variables, in order (a variable may use the ones before it).
PLATFORM_VARIABLES: tuple[dict[str, str], ...] = (
    {"name": "policy", "expression": "has(params.data) ? params.data : {}"},
    _list_variable("images", keys.IMAGES),
    _list_variable("priorityClasses", keys.PRIORITY_CLASSES),
    _list_variable("tolerationKeys", keys.TOLERATION_KEYS),
    _list_variable("nodeSelectorKeys", keys.NODE_SELECTOR_KEYS),
    _distributed_variable("workers", "workers"),
    _distributed_variable("processesPerWorker", "processesPerWorker"),
    {"name": "gangProcesses", "expression": "variables.workers * variables.processesPerWorker"},
    {
        "name": "gpuJob",
        "expression": f"!({has_chain(('distributed', 'accelerator'))}) || "
        "object.spec.distributed.accelerator == 'nvidia-gpu'",
    },
    *(
        {"name": side, "expression": f"{has_chain(('resources', side))} ? object.spec.resources.{side} : {{}}"}
        for side in ("limits", "requests")
    ),
    {
        "name": "acceleratorNames",
        "expression": f"variables.limits.filter(k, {_CEL_COUNTED}) + "
        f"variables.requests.filter(k, {_CEL_COUNTED} && !(k in variables.limits))",
    },
    {"name": "acceleratorCounts", "expression": f"variables.acceleratorNames.map(k, {_cel_count('k')})"},
    {
        "name": "gpusPerWorker",
        "expression": "(variables.gpuJob ? variables.processesPerWorker : 0) + variables.acceleratorCounts.sum()",
    },
    {"name": "gpus", "expression": "variables.workers * variables.gpusPerWorker"},
)

#: The platform policy's first validation: a policy the API server cannot read exactly refuses every
#: job (failing closed), where a misspelt key would otherwise lift its limit silently.
WELL_FORMED: dict[str, str] = {
    "expression": f"variables.policy.all(k, k in [{', '.join(literal(k) for k in keys.KEYS)}]) && "
    f"[{', '.join(literal(k) for k in keys.NUMBER_KEYS)}].all(k, !(k in variables.policy) || "
    f"variables.policy[k].matches('{NUMBER_PATTERN}'))",
    "messageExpression": "'platform policy ConfigMap ' + params.metadata.namespace + '/' + params.metadata.name + "
    '\': refused by rule "policy-well-formed": it has an unknown key or a limit that is not a whole number; '
    "every FineTuneJob is refused until it is fixed (kubetune validate --policy names the key)'",
    "reason": "Invalid",
}


def validate_files_against(
    paths: Iterable[str], policy: PlatformPolicy
) -> tuple[list[FineTuneJob], list[Problem | str]]:
    """`kubetune validate --policy`: every valid job of `paths` that the policy admits, and every problem,
    the policy's refusals among them, each naming file, line and field (each file is read once, so `-`
    works as without a policy)."""
    jobs: list[FineTuneJob] = []
    problems: list[Problem | str] = []
    for path in paths:
        try:
            documents = list(read_documents(path))
        except ManifestError as error:
            problems.append(str(error))
            continue
        for document in documents:
            job, found = validate_document(document)
            refused = [] if job is None else _refusal_problems(document, job, policy)
            problems += found + refused
            if job is not None and not refused:
                jobs.append(job)
    return jobs, problems


def _refusal_problems(document: Document, job: FineTuneJob, policy: PlatformPolicy) -> list[Problem]:
    problems = []
    for refusal in platform_refusals(job.to_wire()["spec"], policy):
        field, _, message = refusal.partition(": ")
        location = ("spec", *field.removeprefix("spec.").split("."))
        problems.append(Problem(document.source, field, message, line_in(document, location), document.index))
    return problems
