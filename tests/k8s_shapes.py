"""The structure each custom resource's operator requires: the fields of its `spec` this project may use,
their types, and which are required (from the operators' CRDs: KEDA 2.x, RabbitMQ Cluster and Messaging
Topology Operators, MongoDB Community Operator). A field not listed is a typo or needs adding here.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

OBJ: Schema = {"type": "object"}
STR: Schema = {"type": "string", "minLength": 1}
INT: Schema = {"type": "integer", "minimum": 0}
REF: Schema = {"type": "object", "required": ["name"], "properties": {"name": STR}}


def closed(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(required),
    }


def resource(spec: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": {"type": "object", "required": ["name"]}, "spec": spec},
    }


SCALED_OBJECT = closed(
    {
        "scaleTargetRef": closed(
            {"name": STR, "apiVersion": STR, "kind": STR, "envSourceContainerName": STR}, ("name",)
        ),
        "pollingInterval": {"type": "integer", "minimum": 1},
        "cooldownPeriod": INT,
        "initialCooldownPeriod": INT,
        "idleReplicaCount": INT,
        "minReplicaCount": INT,
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "fallback": closed({"failureThreshold": INT, "replicas": INT}, ("failureThreshold", "replicas")),
        "advanced": closed(
            {
                "horizontalPodAutoscalerConfig": closed({"name": STR, "behavior": OBJ}),
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "scalingModifiers": OBJ,
            }
        ),
        "triggers": {
            "type": "array",
            "minItems": 1,
            "items": closed(
                {
                    "type": STR,
                    "name": STR,
                    # KEDA takes every metadata value as a string: `value: 100` is refused.
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "authenticationRef": closed(
                        {
                            "name": STR,
                            "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                        },
                        ("name",),
                    ),
                    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    "useCachedMetrics": {"type": "boolean"},
                },
                ("type", "metadata"),
            ),
        },
    },
    ("scaleTargetRef", "triggers"),
)

TRIGGER_AUTHENTICATION = closed(
    {
        "secretTargetRef": {
            "type": "array",
            "minItems": 1,
            "items": closed({"parameter": STR, "name": STR, "key": STR}, ("parameter", "name", "key")),
        },
        "configMapTargetRef": {"type": "array"},
        "env": {"type": "array"},
        "podIdentity": OBJ,
        "hashiCorpVault": OBJ,
        "boundServiceAccountToken": {"type": "array"},
    }
)

RABBITMQ_CLUSTER = closed(
    {
        "replicas": INT,
        "image": STR,
        "imagePullSecrets": {"type": "array"},
        "service": closed({"type": STR, "annotations": OBJ, "ipFamilyPolicy": STR}),
        "persistence": closed(
            {"storageClassName": STR, "storage": {"type": ["string", "integer"]}, "emptyDir": OBJ}
        ),
        "resources": closed({"requests": OBJ, "limits": OBJ, "claims": {"type": "array"}}),
        "rabbitmq": closed(
            {
                "additionalPlugins": {"type": "array", "items": {"type": "string", "pattern": r"^\w+$"}},
                "additionalConfig": {"type": "string"},
                "advancedConfig": {"type": "string"},
                "envConfig": {"type": "string"},
                "erlangInetConfig": {"type": "string"},
            }
        ),
        "affinity": OBJ,
        "tolerations": {"type": "array"},
        "override": closed({"statefulSet": OBJ, "service": OBJ}),
        "tls": OBJ,
        "secretBackend": OBJ,
        "terminationGracePeriodSeconds": INT,
        "delayStartSeconds": INT,
        "skipPostDeploySteps": {"type": "boolean"},
        "autoEnableAllFeatureFlags": {"type": "boolean"},
    }
)

CLUSTER_REFERENCE = closed({"name": STR, "namespace": STR, "connectionSecret": REF})

RABBITMQ_USER = closed(
    {
        "rabbitmqClusterReference": CLUSTER_REFERENCE,
        "importCredentialsSecret": closed({"name": STR}, ("name",)),
        "tags": {
            "type": "array",
            "items": {"enum": ["management", "policymaker", "monitoring", "administrator"]},
        },
        "limits": OBJ,
    },
    ("rabbitmqClusterReference",),
)

RABBITMQ_PERMISSION = {
    **closed(
        {
            "vhost": STR,
            "user": STR,
            "userReference": closed({"name": STR, "namespace": STR}, ("name",)),
            "permissions": closed(
                {"configure": {"type": "string"}, "write": {"type": "string"}, "read": {"type": "string"}}
            ),
            "rabbitmqClusterReference": CLUSTER_REFERENCE,
        },
        ("vhost", "permissions", "rabbitmqClusterReference"),
    ),
    "oneOf": [{"required": ["user"]}, {"required": ["userReference"]}],
}

MONGODB_COMMUNITY = closed(
    {
        "members": INT,
        "arbiters": INT,
        "type": {"enum": ["ReplicaSet"]},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "featureCompatibilityVersion": STR,
        "replicaSetHorizons": {"type": "array"},
        "security": closed(
            {
                "authentication": closed(
                    {
                        "modes": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"enum": ["SCRAM", "SCRAM-SHA-256", "SCRAM-SHA-1", "X509"]},
                        },
                        "ignoreUnknownUsers": {"type": "boolean"},
                        "agentMode": STR,
                    },
                    ("modes",),
                ),
                "tls": OBJ,
                "roles": {"type": "array"},
            }
        ),
        "users": {
            "type": "array",
            "minItems": 1,
            "items": closed(
                {
                    "name": STR,
                    "db": STR,
                    "passwordSecretRef": closed({"name": STR, "key": STR}, ("name",)),
                    "roles": {
                        "type": "array",
                        "minItems": 1,
                        "items": closed({"name": STR, "db": STR}, ("name", "db")),
                    },
                    "scramCredentialsSecretName": {
                        "type": "string",
                        "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                    },
                    "connectionStringSecretName": STR,
                    "connectionStringSecretNamespace": STR,
                    "additionalConnectionStringConfig": OBJ,
                },
                ("name", "roles"),
            ),
        },
        "statefulSet": closed({"spec": OBJ, "metadata": OBJ}, ("spec",)),
        "agent": OBJ,
        "additionalMongodConfig": OBJ,
        "automationConfig": OBJ,
        "prometheus": OBJ,
        "additionalConnectionStringConfig": OBJ,
        "memberConfig": {"type": "array"},
    },
    ("type", "security", "users"),
)

SHAPES: dict[tuple[str, str], Schema] = {
    ("keda.sh/v1alpha1", "ScaledObject"): resource(SCALED_OBJECT),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): resource(TRIGGER_AUTHENTICATION),
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): resource(RABBITMQ_CLUSTER),
    ("rabbitmq.com/v1beta1", "User"): resource(RABBITMQ_USER),
    ("rabbitmq.com/v1beta1", "Permission"): resource(RABBITMQ_PERMISSION),
    ("mongodbcommunity.mongodb.com/v1", "MongoDBCommunity"): resource(MONGODB_COMMUNITY),
}
