"""SageMaker endpoint lifecycle with plain boto3: package, upload, create, autoscale, status, list, delete.

The studio deploys the endpoint it then drives (studio.remote) and tears it down without leaving anything that
costs money. Everything is explicit steps with progress callbacks, so the CLI (`python -m studio.deploy`) and the
Settings tab (studio.ui.deploy_panel) show the same thing.

- plan.py: `DeployPlan` and its validation (PlanError names the field before anything is created), role discovery.
- pricing.py: the shipped price table and the default container image. package.py: model.tar.gz.
- create.py: the step runner with its rollback stack. autoscaling.py: target, policies, scale-from-zero alarm.
- inventory.py: the one listing (status, list, the start-up warning). delete.py: delete and verify.
- resources.py: the names and `sd-studio` tags of what is created — how list and delete find it.

Importing this package is cheap (boto3 is imported inside the functions that call AWS, through studio.aws), so
the UI can import it at start.
"""

from studio.deploy.create import CREATE_STEPS, DeployResult, create
from studio.deploy.delete import DeleteReport, delete
from studio.deploy.inventory import (
    TABLE_HEADERS,
    EndpointInfo,
    list_endpoints,
    running_endpoints_warning,
    status,
)
from studio.deploy.package import MODEL_ENV_VAR, container_requirements, model_environment, package_model
from studio.deploy.plan import (
    DEFAULT_PREFIX,
    MODES,
    S3_ARCHIVE,
    DeployError,
    DeployPlan,
    EndpointNotFound,
    PlanError,
    ProgressCallback,
    discover_role,
    resolve_region,
)
from studio.deploy.pricing import (
    DEFAULT_INSTANCE_TYPE,
    INSTANCE_PRICES,
    PRICE_NOTE,
    default_image,
    describe_price,
    price_per_hour,
)

__all__ = [
    "CREATE_STEPS",
    "DEFAULT_INSTANCE_TYPE",
    "DEFAULT_PREFIX",
    "INSTANCE_PRICES",
    "MODEL_ENV_VAR",
    "MODES",
    "PRICE_NOTE",
    "S3_ARCHIVE",
    "TABLE_HEADERS",
    "DeleteReport",
    "DeployError",
    "DeployPlan",
    "DeployResult",
    "EndpointInfo",
    "EndpointNotFound",
    "PlanError",
    "ProgressCallback",
    "container_requirements",
    "create",
    "default_image",
    "delete",
    "describe_price",
    "discover_role",
    "list_endpoints",
    "model_environment",
    "package_model",
    "price_per_hour",
    "resolve_region",
    "running_endpoints_warning",
    "status",
]
