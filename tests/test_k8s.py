"""The Kubernetes manifests (deploy/k8s), validated offline: no cluster, no kubectl, no download.

    .venv/bin/python -m pytest -q tests/test_k8s.py

Each overlay is rendered in Python by `render()` below, a subset of kustomize: resources (files and
folders), namespace, labels, images, patches (strategic merge by kind and name, lists of named
items merged by name), configMapGenerator with files and disableNameSuffixHash. A kustomization
field it does not know fails the test instead of being ignored. Every rendered object is validated
strictly against the Kubernetes OpenAPI schemas shipped in the kubernetes-validate package, and
names, ports, probes, annotations and limits are checked against the pod's config.properties.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # oldest and newest schema this deployment is checked on
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches",
             "configMapGenerator", "generatorOptions"}


# --- a small kustomize ----------------------------------------------------------------------------

def merge(base, patch):
    """Strategic merge: maps recursively, lists of maps with a "name" merged by name, else replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and patch
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def render(folder: Path) -> list[dict]:
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    assert not unknown, f"{folder}: the test's renderer does not know {sorted(unknown)}"
    objs: list[dict] = []
    for res in k.get("resources", []):
        path = folder / res
        if path.is_dir():
            objs += render(path)
        else:
            objs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        assert (k.get("generatorOptions") or {}).get("disableNameSuffixHash"), \
            "the renderer does not compute kustomize's name hash"
        data = {Path(f).name: (folder / f).read_text() for f in gen.get("files", [])}
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for p in k.get("patches", []):
        assert set(p) == {"path"}, f"only file patches are supported, got {p}"
        patch = yaml.safe_load((folder / p["path"]).read_text())
        targets = [i for i, o in enumerate(objs) if o["kind"] == patch["kind"]
                   and o["metadata"]["name"] == patch["metadata"]["name"]]
        assert len(targets) == 1, f"patch {p['path']} matches {len(targets)} objects"
        objs[targets[0]] = merge(objs[targets[0]], patch)
    for group in k.get("labels", []):
        for o in objs:
            o["metadata"].setdefault("labels", {}).update(group["pairs"])
    for image in k.get("images", []):
        for o in objs:
            for c in containers(o):
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    if "namespace" in k:
        for o in objs:
            o["metadata"]["namespace"] = k["namespace"]
    return objs


# --- helpers ---------------------------------------------------------------------------------

def properties(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def by_kind(objs: list[dict]) -> dict[str, dict]:
    kinds = {}
    for o in objs:
        assert o["kind"] not in kinds, f"two {o['kind']} objects"
        kinds[o["kind"]] = o
    return kinds


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    objs = render(K8S / "overlays" / request.param)
    return request.param, objs, by_kind(objs)


# --- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(overlay, version):
    import kubernetes_validate

    name, objs, _ = overlay
    assert {o["kind"] for o in objs} >= {"Deployment", "Service", "HorizontalPodAutoscaler",
                                         "PodDisruptionBudget", "Ingress", "NetworkPolicy", "ConfigMap"}
    for o in objs:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {o['kind']}/{o['metadata']['name']} invalid for Kubernetes {version}: "
                        f"{'.'.join(map(str, e.path))}: {e.message}")


def test_a_broken_manifest_is_refused_by_the_validator(overlay):
    import kubernetes_validate

    _, _, kinds = overlay
    bad = copy.deepcopy(kinds["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


def test_pod_config_binds_all_interfaces_with_tokens_off_and_says_why():
    text = (BASE / "config.properties").read_text()
    conf = properties(text)
    for api in ("inference", "management", "metrics"):
        assert conf[f"{api}_address"].startswith("http://0.0.0.0:")
    assert conf["disable_token_authorization"] == "true"
    assert "POD: bind 0.0.0.0" in text and "POD: tokens OFF" in text
    local = properties((BASE.parent.parent.parent / "config.properties").read_text())
    assert local["inference_address"].startswith("http://127.0.0.1:")  # make serve stays on loopback
    assert local["disable_token_authorization"] == "false"


def test_names_ports_and_probes_agree_with_config_properties(overlay):
    name, objs, kinds = overlay
    config_map = kinds["ConfigMap"]
    conf = properties(config_map["data"]["config.properties"])
    ports = {api: port_of(conf[f"{api}_address"]) for api in ("inference", "management", "metrics")}

    dep = kinds["Deployment"]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == ports
    config_volume = next(v for v in pod["spec"]["volumes"] if v.get("configMap"))
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == config_volume["name"])
    assert c["args"][c["args"].index("--config") + 1] == f"{mount['mountPath']}/config.properties"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/ping" and c[probe]["httpGet"]["port"] == "inference"
    ready_file = c["args"][c["args"].index("--ready-file") + 1]
    assert c["startupProbe"]["exec"]["command"] == ["test", "-f", ready_file]
    assert any(ready_file.startswith(m["mountPath"] + "/") for m in c["volumeMounts"]), \
        "the ready file must be on a writable volume (read-only root file system)"
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert c["image"].startswith("registry.example.org/galaxy-morph:") and c["image"].endswith(name if name == "cpu" else "cuda")
    if name == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"] and annotations["prometheus.io/path"] == "/metrics"

    svc = kinds["Service"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == \
        {api: (port, api) for api, port in ports.items()}

    hpa, pdb = kinds["HorizontalPodAutoscaler"], kinds["PodDisruptionBudget"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] <= hpa["spec"]["minReplicas"] or name == "gpu"
    assert len({o["metadata"].get("namespace") for o in objs}) == 1


def test_ingress_requires_authentication_and_routes_only_inference(overlay):
    _, _, kinds = overlay
    ing = kinds["Ingress"]
    conf = properties(kinds["ConfigMap"]["data"]["config.properties"])
    a = ing["metadata"]["annotations"]
    assert a["nginx.ingress.kubernetes.io/auth-type"] == "basic" and a["nginx.ingress.kubernetes.io/auth-secret"]
    size = a["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m") and int(size[:-1]) * 1024 * 1024 == int(conf["max_request_size"])
    backends = [p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": kinds["Service"]["metadata"]["name"], "port": {"name": "inference"}}]
    assert ing["spec"]["tls"]


def test_network_policy_keeps_management_and_metrics_in_the_cluster(overlay):
    _, _, kinds = overlay
    pol = kinds["NetworkPolicy"]
    assert pol["spec"]["podSelector"]["matchLabels"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    assert pol["spec"]["policyTypes"] == ["Ingress"]
    allowed = {}
    for rule in pol["spec"]["ingress"]:
        assert rule.get("from"), "a rule without 'from' would admit every source"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, "no address outside the cluster may be admitted"
        for port in rule["ports"]:
            allowed.setdefault(port["port"], []).extend(rule["from"])
    assert set(allowed) == {"inference", "management", "metrics"}
    assert allowed["management"] == [{"podSelector": {}}]  # this namespace only
    assert all("namespaceSelector" not in p or p["namespaceSelector"].get("matchLabels")
               for p in allowed["metrics"])


def test_renderer_merges_named_lists_like_kustomize():
    base = {"spec": {"containers": [{"name": "a", "image": "x", "ports": [{"name": "p", "containerPort": 1}]},
                                    {"name": "b", "image": "y"}]}}
    patch = {"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}}}]}}
    out = merge(base, patch)
    assert out["spec"]["containers"][0] == {"name": "a", "image": "x", "ports": [{"name": "p", "containerPort": 1}],
                                            "resources": {"limits": {"cpu": "1"}}}
    assert out["spec"]["containers"][1] == {"name": "b", "image": "y"}
