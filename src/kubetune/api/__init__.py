"""The FineTuneJob API (kubetune.io/v1alpha1), written once as pydantic models.

Import the names from here: `from kubetune.api import FineTuneJob, FineTuneJobStatus`.
"""

from kubetune.api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION, FineTuneJob, FineTuneJobSpec
from kubetune.api.status import ConditionType, FineTuneJobStatus, Reason

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ConditionType",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "Reason",
]
