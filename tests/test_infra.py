"""infra/ is consistent with the code: every YAML parses and uses current field names (KubeRay CRDs,
the GCE cluster launcher), every image is the project image or official Ray, the lock file satisfies
pyproject and the Dockerfile uses it, render.sh fills every placeholder. Job entrypoints, CLI flags,
presets and the Serve app are checked in tests/test_infra_jobs.py. Light: parses files only; nothing
talks to GCP or Kubernetes, no Ray cluster is started.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.infra_helpers import (
    EXPECTED_JOBS,
    IMAGE,
    INFRA,
    LAUNCHER,
    MOUNT,
    PLACEHOLDERS,
    PYPROJECT,
    RAY_VERSION,
    kuberay_docs,
    load_docs,
    ray_docs,
    yaml_files,
)

# Field names of the KubeRay ray.io/v1 CRDs, copied from the Go types in ray-project/kuberay:
#   ray-operator/apis/ray/v1/rayjob_types.go      (RayJobSpec, commit 0057210ed5a94e830c864af372577328c3542b44)
#   ray-operator/apis/ray/v1/raycluster_types.go  (RayClusterSpec, HeadGroupSpec, WorkerGroupSpec,
#                                                  AutoscalerOptions, commit 3275ee09f6a6c899c37e82ea6349785536de6bd4)
#   ray-operator/apis/ray/v1/rayservice_types.go  (RayServiceSpec, commit 834fe3a876c5b5631ffc2e33f82dca3a6f31137d;
#                                                  the two deprecated *UnhealthySecondThreshold fields left out)
# plus RayClusterSpec.authOptions {mode, secretName} (commits 58c2aad8d "Add support for Ray token auth" and
# 94c85c250 "add support for referencing Secret names for auth tokens", both first released in KubeRay v1.6.0).
RAYJOB_SPEC = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}
RAYCLUSTER_SPEC = {
    "authOptions",
    "suspend",
    "managedBy",
    "autoscalerOptions",
    "headServiceAnnotations",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "rayVersion",
    "workerGroupSpecs",
}
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {
    "suspend",
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
}
AUTOSCALER_OPTIONS = {
    "resources",
    "image",
    "imagePullPolicy",
    "securityContext",
    "idleTimeoutSeconds",
    "upscalingMode",
    "env",
    "envFrom",
    "volumeMounts",
}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}
RAYSERVICE_SPEC = {"serveConfigV2", "rayClusterConfig", "serveService"}


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayClusterSpec: a RayCluster's spec, a RayJob's rayClusterSpec, a RayService's rayClusterConfig."""
    out = []
    for path, doc in ray_docs():
        spec = doc["spec"]
        where = f"{path.name}:{doc['metadata']['name']}"
        if doc["kind"] == "RayCluster":
            out.append((where, spec))
        elif doc["kind"] == "RayJob" and "rayClusterSpec" in spec:
            out.append((where, spec["rayClusterSpec"]))
        elif doc["kind"] == "RayService":
            out.append((where, spec["rayClusterConfig"]))
    return out


def pod_templates() -> list[tuple[str, str, dict]]:
    """(where, group name, pod template) for every Ray pod: heads and worker groups."""
    out = []
    for where, spec in cluster_specs():
        out.append((where, "head", spec["headGroupSpec"]["template"]))
        for group in spec.get("workerGroupSpecs") or []:
            out.append((where, group["groupName"], group["template"]))
    return out


def walk(node, key: str):
    """Every value stored under `key` anywhere in a nested YAML structure."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


# ----------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_parses(path):
    load_docs(path)


def test_kuberay_kinds_and_api_versions():
    kinds: dict[str, list[str]] = {}
    for path, doc in kuberay_docs():
        kind, api = doc.get("kind"), doc.get("apiVersion")
        if kind in ("Namespace", "ServiceAccount", "Secret"):
            assert api == "v1", f"{path.name}: {kind} must be apiVersion v1"
        elif kind == "NetworkPolicy":
            assert api == "networking.k8s.io/v1", f"{path.name}: NetworkPolicy uses {api!r}"
        else:
            assert api == "ray.io/v1", f"{path.name}: {kind} uses {api!r}, not the current ray.io/v1"
            assert kind in ("RayCluster", "RayJob", "RayService"), f"{path.name}: unexpected kind {kind}"
        assert doc["metadata"].get("name"), f"{path.name}: {kind} without a name"
        kinds.setdefault(kind, []).append(path.name)
    assert len(kinds["RayCluster"]) == 1 and len(kinds["RayService"]) == 1
    assert sorted(kinds["RayJob"]) == sorted(EXPECTED_JOBS), "one RayJob per pipeline job"
    namespaces = {doc["metadata"]["name"] for _, doc in kuberay_docs() if doc["kind"] == "Namespace"}
    for path, doc in kuberay_docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") in namespaces, f"{path.name}: namespace not defined here"


def test_ray_crd_field_names():
    for path, doc in ray_docs():
        spec, kind = doc["spec"], doc["kind"]
        known = {"RayJob": RAYJOB_SPEC, "RayService": RAYSERVICE_SPEC, "RayCluster": RAYCLUSTER_SPEC}[kind]
        assert set(spec) <= known, f"{path.name}: unknown {kind} spec fields {sorted(set(spec) - known)}"
        if kind == "RayJob":
            assert spec["submissionMode"] in SUBMISSION_MODES
            assert spec.get("entrypoint"), f"{path.name}: RayJob without an entrypoint"
            assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), (
                f"{path.name}: a RayJob needs exactly one of rayClusterSpec / clusterSelector"
            )
            if spec.get("shutdownAfterJobFinishes"):
                assert isinstance(spec.get("ttlSecondsAfterFinished"), int)
        if kind == "RayService":
            assert isinstance(spec["serveConfigV2"], str), "serveConfigV2 is a YAML string, not a mapping"
    for where, spec in cluster_specs():
        assert set(spec) <= RAYCLUSTER_SPEC, (
            f"{where}: unknown RayClusterSpec fields {set(spec) - RAYCLUSTER_SPEC}"
        )
        assert spec["rayVersion"] == RAY_VERSION, f"{where}: rayVersion {spec['rayVersion']}"
        head = spec["headGroupSpec"]
        assert set(head) <= HEAD_GROUP and {"template", "rayStartParams"} <= set(head), where
        opts = spec.get("autoscalerOptions") or {}
        assert set(opts) <= AUTOSCALER_OPTIONS, (
            f"{where}: unknown autoscalerOptions {set(opts) - AUTOSCALER_OPTIONS}"
        )
        if "upscalingMode" in opts:
            assert opts["upscalingMode"] in UPSCALING_MODES
        names = [g["groupName"] for g in spec.get("workerGroupSpecs") or []]
        assert len(names) == len(set(names)), f"{where}: duplicate worker group names"
        for group in spec.get("workerGroupSpecs") or []:
            assert set(group) <= WORKER_GROUP, (
                f"{where}: unknown WorkerGroupSpec fields {set(group) - WORKER_GROUP}"
            )
            assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
            lo, hi = group["minReplicas"], group["maxReplicas"]
            assert 0 <= lo <= group.get("replicas", lo) <= hi, (
                f"{where}/{group['groupName']}: replicas out of range"
            )
        for params in [
            head["rayStartParams"],
            *(g["rayStartParams"] for g in spec.get("workerGroupSpecs") or []),
        ]:
            assert all(isinstance(v, str) for v in params.values()), (
                f"{where}: rayStartParams values are strings"
            )


def test_the_long_lived_cluster_autoscales_cpu_and_gpu_groups():
    [(_, cluster)] = ray_docs("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert group["minReplicas"] == 0 and group["maxReplicas"] > 0, "workers scale from zero"
    [container] = groups["gpu"]["template"]["spec"]["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) > 0
    [container] = groups["cpu"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


# ----------------------------------------------------------------------------------------------- pods
def test_pods_share_image_account_and_bucket_mount():
    accounts = {d["metadata"]["name"] for _, d in kuberay_docs() if d["kind"] == "ServiceAccount"}
    for _, d in kuberay_docs():
        if d["kind"] == "ServiceAccount":
            assert d["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].startswith(
                "phenaki-ray@PROJECT_ID."
            )
    for where, group, template in pod_templates():
        pod = template["spec"]
        label = f"{where}/{group}"
        assert pod["serviceAccountName"] in accounts, f"{label}: service account not defined in infra/kuberay"
        volumes = {v["name"]: v for v in pod["volumes"]}
        bucket = [
            v for v in volumes.values() if v.get("csi", {}).get("driver") == "gcsfuse.csi.storage.gke.io"
        ]
        assert len(bucket) == 1 and bucket[0]["csi"]["volumeAttributes"]["bucketName"] == "BUCKET", label
        assert template["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true", (
            f"{label}: GCS FUSE sidecar"
        )
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
            assert mounts.get(MOUNT) == bucket[0]["name"], f"{label}: bucket not mounted at {MOUNT}"
            assert all(name in volumes for name in mounts.values()), f"{label}: mount of an undefined volume"
            assert container["image"] == IMAGE, f"{label}: image {container['image']} is not infra/image.txt"
            limits = container.get("resources", {}).get("limits", {})
            gpus = int(limits.get("nvidia.com/gpu", 0))
            if gpus:
                tolerations = {t["key"] for t in pod.get("tolerations") or []}
                assert "nvidia.com/gpu" in tolerations, (
                    f"{label}: GPU pod without the nvidia.com/gpu toleration"
                )
                assert "cloud.google.com/gke-accelerator" in pod["nodeSelector"], (
                    f"{label}: no GPU node selector"
                )


def test_every_image_is_the_project_image_or_official_ray():
    official = re.compile(rf"^rayproject/ray:{re.escape(RAY_VERSION)}(-py311)?(-(gpu|cpu|cu\d+))?$")
    assert re.fullmatch(r"REGION-docker\.pkg\.dev/PROJECT_ID/phenaki/phenaki-ray:[\w.\-]+", IMAGE), IMAGE
    assert IMAGE.rsplit(":", 1)[1] == PYPROJECT["project"]["version"], "image tag = the package version"
    seen = 0
    for path in yaml_files():
        for doc in load_docs(path):
            for key in ("image", "head_image", "worker_image", "_IMAGE"):
                for image in walk(doc, key):
                    if not isinstance(image, str):
                        continue
                    seen += 1
                    assert image == IMAGE or official.match(image), f"{path.name}: unexpected image {image}"
    assert seen >= 8
    dockerfile = (INFRA / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", dockerfile, flags=re.M).group(1)
    assert official.match(base) and base.endswith("-gpu"), f"Dockerfile base {base}: Ray's CUDA image"
    cloudbuild = yaml.safe_load((INFRA / "cloudbuild.yaml").read_text())
    assert cloudbuild["substitutions"]["_IMAGE"] == IMAGE
    assert "infra/Dockerfile" in cloudbuild["steps"][0]["args"]


# ----------------------------------------------------------------------------------------------- exposure
AUTH_SECRET = "phenaki-ray-auth"
RAY_CONTROL_PORTS = {6379, 8265, 10001}  # GCS, dashboard + Jobs API, Ray Client
SERVE_PORT = 8000
# KubeRay labels every head and worker pod it creates with this (ray-operator/controllers/ray/common/pod.go).
RAY_POD_LABELS = {"ray.io/is-ray-node": "yes"}
OPERATOR_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
}


def only(kind: str) -> dict:
    [(_, doc)] = [(p, d) for p, d in kuberay_docs() if d["kind"] == kind]
    return doc


def test_ray_token_auth_comes_from_one_secret_on_every_ray_container():
    secret = only("Secret")
    assert secret["metadata"]["name"] == AUTH_SECRET and secret["metadata"]["namespace"] == "phenaki"
    assert not secret.get("data") and not secret.get("stringData"), "a token is committed in infra/"
    for where, spec in cluster_specs():
        # authOptions is what makes the operator send the token on its dashboard calls and hand it to the
        # RayJob submitter and autoscaler containers it builds; without it RayJob/RayService get 401s.
        assert spec.get("authOptions") == {"mode": "token", "secretName": AUTH_SECRET}, where
    for where, group, template in pod_templates():
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env") or []}
            label = f"{where}/{group}/{container['name']}"
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{label}: RAY_AUTH_MODE=token"
            token = env.get("RAY_AUTH_TOKEN", {})
            assert "value" not in token, f"{label}: RAY_AUTH_TOKEN written into the manifest"
            assert token.get("valueFrom") == {"secretKeyRef": {"name": AUTH_SECRET, "key": "auth_token"}}, (
                label
            )


def test_the_launcher_turns_on_token_auth_and_binds_the_dashboard_to_loopback():
    raw = yaml.safe_load(LAUNCHER.read_text())
    assert "--env RAY_AUTH_MODE=token" in raw["docker"]["run_options"]
    # ~/.ray/auth_token is where `ray start` looks for the token when RAY_AUTH_MODE=token
    assert raw["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    [head_start] = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start.split()
    assert "0.0.0.0" not in LAUNCHER.read_text()


def test_kuberay_heads_bind_the_dashboard_only_where_the_operator_needs_it():
    policy = only("NetworkPolicy")
    for path, doc in ray_docs():
        spec = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
        params = spec["headGroupSpec"]["rayStartParams"]
        # Left out, KubeRay sets 0.0.0.0 silently. 0.0.0.0 is what the operator and the RayJob submitter need
        # (they call the dashboard through the head Service), so such a head must sit where the policy applies.
        assert params.get("dashboard-host") in ("127.0.0.1", "0.0.0.0"), (
            f"{path.name}: dashboard-host not set"
        )
        if params["dashboard-host"] == "0.0.0.0":
            assert doc["metadata"]["namespace"] == policy["metadata"]["namespace"], path.name


def policy_peers(policy: dict, port: int) -> list[dict | None]:
    """Who may connect to `port` of the selected pods: each peer of a matching rule, None for any source."""
    peers: list[dict | None] = []
    for rule in policy["spec"].get("ingress") or []:
        ports = rule.get("ports")
        if ports is None or any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
            peers.extend(rule["from"] if rule.get("from") else [None])
    return peers


def test_the_network_policy_keeps_ray_control_ports_in_the_namespace():
    policy = only("NetworkPolicy")
    assert policy["metadata"]["namespace"] == "phenaki"
    assert policy["spec"]["podSelector"] == {"matchLabels": RAY_POD_LABELS}, "selects every Ray pod"
    assert "Ingress" in policy["spec"]["policyTypes"]
    same_namespace = {"podSelector": {}}
    declared = set()
    for where, group, template in pod_templates():
        for container in template["spec"]["containers"]:
            for port in container.get("ports") or []:
                declared.add(port["containerPort"])
                if port.get("name") == "serve":
                    assert port["containerPort"] == SERVE_PORT, f"{where}/{group}"
    assert declared >= RAY_CONTROL_PORTS, (
        "the heads declare the Ray ports (KubeRay builds the Service from them)"
    )
    for port in RAY_CONTROL_PORTS | declared - {SERVE_PORT}:
        allowed = [same_namespace, OPERATOR_PEER] if port == 8265 else [same_namespace]
        peers = policy_peers(policy, port)
        assert None not in peers, f"port {port} is open to any source"
        assert all(peer in allowed for peer in peers) and same_namespace in peers, f"port {port}: {peers}"
    assert OPERATOR_PEER in policy_peers(policy, 8265), "the KubeRay operator must reach the dashboard"
    assert None in policy_peers(policy, SERVE_PORT), "Serve's HTTP port is the endpoint: open"


# ----------------------------------------------------------------------------------------------- GCE
def test_cluster_launcher_config_is_valid_for_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(raw))  # Ray 2.60's own schema (ray/autoscaler/ray-schema.json)
    assert raw["provider"]["type"] == "gcp"
    assert raw["provider"]["project_id"] == "PROJECT_ID" and raw["provider"]["availability_zone"] == "ZONE"
    assert raw["docker"]["image"] == IMAGE
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != raw["head_node_type"]}
    assert sum(t["max_workers"] for t in workers.values()) <= raw["max_workers"]
    gpu_types = [t for t in workers.values() if t["resources"].get("GPU")]
    cpu_types = [t for t in workers.values() if not t["resources"].get("GPU")]
    assert gpu_types and cpu_types, "CPU data nodes and GPU trainer nodes"
    for t in workers.values():
        assert t["min_workers"] == 0 < t["max_workers"], "worker types autoscale from zero"
        accounts = t["node_config"].get("serviceAccounts") or []
        assert [a["email"] for a in accounts] == ["phenaki-ray@PROJECT_ID.iam.gserviceaccount.com"]
    for t in gpu_types:
        node = t["node_config"]
        assert sum(a["acceleratorCount"] for a in node["guestAccelerators"]) == t["resources"]["GPU"]
        assert node["scheduling"]["onHostMaintenance"] == "TERMINATE", "GCE requires it for GPU VMs"
    mounts = " ".join(raw["initialization_commands"])
    assert f"BUCKET {MOUNT}" in mounts and f"{MOUNT}:{MOUNT}" in " ".join(raw["docker"]["run_options"])


# ----------------------------------------------------------------------------------------------- image
def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (INFRA / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def test_lock_pins_satisfy_pyproject_and_the_dockerfile_uses_them():
    pins = lock_pins()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        regen = "regenerate it: .venv/bin/python infra/lock.py"
        assert name in pins, f"infra/requirements.lock lacks {req.name}; {regen}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} breaks {spec}; {regen}"
        )
    assert pins["ray"] == RAY_VERSION and pins["deepspeed"] == "0.19.8" and pins["torch"] == "2.13.0"
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, flags=re.M).group(1) == pins["torch"]
    assert "-r infra/requirements.lock" in dockerfile
    assert re.search(r"pip install [^\n]*--no-deps[^\n]* -e \.", dockerfile), (
        "the project must not re-resolve deps"
    )
    assert not re.search(r"^\s*HEALTHCHECK", dockerfile, flags=re.M), "Ray manages health"
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    for folder in ("modeling", "pipelines", "jobs", "configs"):
        assert re.search(rf"^COPY .*\b{folder} {folder}$", dockerfile, flags=re.M), (
            f"Dockerfile must copy {folder}/"
        )


# ----------------------------------------------------------------------------------------------- render
def test_render_fills_every_placeholder(tmp_path):
    env = {
        **os.environ,
        "PROJECT_ID": "proj-1",
        "REGION": "us-central1",
        "ZONE": "us-central1-a",
        "BUCKET": "bkt",
    }
    rendered_image = subprocess.run(
        ["bash", str(INFRA / "render.sh"), "--image"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert (
        rendered_image
        == "us-central1-docker.pkg.dev/proj-1/phenaki/phenaki-ray:" + PYPROJECT["project"]["version"]
    )
    subprocess.run(
        ["bash", str(INFRA / "render.sh"), str(tmp_path)], env=env, capture_output=True, check=True
    )
    rendered = sorted(tmp_path.rglob("*.yaml"))
    assert [p.relative_to(tmp_path) for p in rendered] == [p.relative_to(INFRA) for p in yaml_files()]
    for path in rendered:
        text = path.read_text()
        left = [w for w in PLACEHOLDERS if re.search(rf"\b{w}\b", text)]
        assert not left, f"{path.name}: placeholders left after render: {left}"
        for doc in load_docs(path):
            for image in walk(doc, "image"):
                assert image == rendered_image or image.startswith("rayproject/"), f"{path.name}: {image}"
    env.pop("BUCKET")
    missing = subprocess.run(
        ["bash", str(INFRA / "render.sh"), "--image"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "BUCKET" in missing.stderr


def test_infra_docs_name_every_file():
    readme = (INFRA / "README.md").read_text()
    for path in [*yaml_files(), INFRA / "Dockerfile", INFRA / "image.txt", INFRA / "requirements.lock"]:
        assert path.name in readme, f"infra/README.md does not mention {path.name}"
