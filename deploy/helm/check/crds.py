"""Schemas of the custom resources the chart renders, with the fields their projects
document (KEDA 2.x ScaledObject and TriggerAuthentication, the RabbitMQ cluster operator's
RabbitmqCluster, the Prometheus operator's ServiceMonitor and PodMonitor). Unknown fields are
refused, as the API server refuses them for a structural CRD. Written from the projects'
reference documentation and CRDs; only the fields listed here may be used by the chart.
"""

ANY = {}
STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STR_MAP = {"type": "object", "additionalProperties": STR}


def obj(props, required=()):
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "required": list(required),
    }


def arr(items):
    return {"type": "array", "items": items}


METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": STR, "namespace": STR, "labels": STR_MAP, "annotations": STR_MAP},
}
LABEL_SELECTOR = obj({"matchLabels": STR_MAP, "matchExpressions": arr(ANY)})


def resource(api_version, kind, spec):
    return obj(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        required=["apiVersion", "kind", "metadata", "spec"],
    )


# https://keda.sh/docs/2.16/reference/scaledobject-spec/
SCALED_OBJECT = resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    obj(
        {
            "scaleTargetRef": obj(
                {"name": STR, "kind": STR, "apiVersion": STR, "envSourceContainerName": STR},
                required=["name"],
            ),
            "pollingInterval": INT,
            "cooldownPeriod": INT,
            "initialCooldownPeriod": INT,
            "idleReplicaCount": INT,
            "minReplicaCount": INT,
            "maxReplicaCount": INT,
            "fallback": obj({"failureThreshold": INT, "replicas": INT, "behavior": STR}),
            "advanced": obj(
                {
                    "restoreToOriginalReplicaCount": BOOL,
                    "horizontalPodAutoscalerConfig": obj({"name": STR, "behavior": ANY}),
                    "scalingModifiers": ANY,
                }
            ),
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": obj(
                    {
                        "type": STR,
                        "name": STR,
                        "metadata": STR_MAP,
                        "authenticationRef": obj(
                            {
                                "name": STR,
                                "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                            },
                            required=["name"],
                        ),
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": BOOL,
                    },
                    required=["type", "metadata"],
                ),
            },
        },
        required=["scaleTargetRef", "triggers"],
    ),
)

# https://keda.sh/docs/2.16/concepts/authentication/
TRIGGER_AUTHENTICATION = resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    obj(
        {
            "secretTargetRef": arr(obj({"parameter": STR, "name": STR, "key": STR}, required=["parameter", "name", "key"])),
            "env": arr(obj({"parameter": STR, "name": STR, "containerName": STR}, required=["parameter", "name"])),
            "configMapTargetRef": arr(obj({"parameter": STR, "name": STR, "key": STR}, required=["parameter", "name", "key"])),
            "podIdentity": ANY,
            "hashiCorpVault": ANY,
            "azureKeyVault": ANY,
            "awsSecretManager": ANY,
            "gcpSecretManager": ANY,
            "boundServiceAccountToken": ANY,
        }
    ),
)

# The rabbitmq scaler's trigger metadata and authentication parameters (KEDA 2.16).
RABBITMQ_TRIGGER_METADATA = {
    "host", "hostFromEnv", "usernameFromEnv", "passwordFromEnv", "protocol", "mode", "value",
    "activationValue", "queueName", "vhostName", "useRegex", "excludeUnacknowledged",
    "pageSize", "operation", "timeout", "unsafeSsl", "queueLength",
}
RABBITMQ_AUTH_PARAMETERS = {
    "host", "username", "password", "vhostName", "protocol", "ca", "cert", "key", "keyPassword",
    "tls", "workloadIdentityResource",
}

# https://www.rabbitmq.com/kubernetes/operator/using-operator (RabbitmqCluster spec)
RABBITMQ_CLUSTER = resource(
    "rabbitmq.com/v1beta1",
    "RabbitmqCluster",
    obj(
        {
            "replicas": {"type": "integer", "minimum": 0},
            "image": STR,
            "imagePullSecrets": arr(ANY),
            "service": obj({"type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]}, "annotations": STR_MAP, "ipFamilyPolicy": STR}),
            "persistence": obj({"storageClassName": STR, "storage": {"type": ["string", "integer"]}}),
            "resources": obj({"requests": ANY, "limits": ANY, "claims": ANY}),
            "affinity": ANY,
            "tolerations": arr(ANY),
            "rabbitmq": obj(
                {
                    "additionalPlugins": arr({"type": "string", "pattern": "^\\w+$"}),
                    "additionalConfig": {"type": "string", "maxLength": 100000},
                    "advancedConfig": {"type": "string", "maxLength": 100000},
                    "envConfig": {"type": "string", "maxLength": 100000},
                    "erlangInetConfig": {"type": "string", "maxLength": 2000},
                }
            ),
            "tls": obj({"secretName": STR, "caSecretName": STR, "disableNonTLSListeners": BOOL}),
            "skipPostDeploySteps": BOOL,
            "terminationGracePeriodSeconds": INT,
            "delayStartSeconds": INT,
            "override": ANY,
            "secretBackend": ANY,
            "autoEnableAllFeatureFlags": BOOL,
        }
    ),
)

# https://prometheus-operator.dev/docs/api-reference/api/ (monitoring.coreos.com/v1)
_ENDPOINT = {
    "port": STR,
    "path": STR,
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
    "scrapeTimeout": STR,
    "tlsConfig": ANY,
    "honorLabels": BOOL,
    "relabelings": arr(ANY),
    "metricRelabelings": arr(ANY),
    "params": ANY,
}
SERVICE_MONITOR = resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    obj(
        {
            "selector": LABEL_SELECTOR,
            "endpoints": arr(obj(dict(_ENDPOINT, targetPort=ANY, bearerTokenSecret=ANY))),
            "namespaceSelector": obj({"any": BOOL, "matchNames": arr(STR)}),
            "jobLabel": STR,
            "targetLabels": arr(STR),
            "podTargetLabels": arr(STR),
            "sampleLimit": INT,
        },
        required=["selector"],
    ),
)
POD_MONITOR = resource(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    obj(
        {
            "selector": LABEL_SELECTOR,
            "podMetricsEndpoints": arr(obj(dict(_ENDPOINT, portNumber=INT))),
            "namespaceSelector": obj({"any": BOOL, "matchNames": arr(STR)}),
            "jobLabel": STR,
            "podTargetLabels": arr(STR),
            "sampleLimit": INT,
        },
        required=["selector"],
    ),
)

SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): RABBITMQ_CLUSTER,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
}
