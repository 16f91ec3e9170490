"""The Kubernetes manifests (deploy/k8s), validated offline: no cluster, no kubectl, no download.

    .venv/bin/python -m pytest -q tests/test_k8s.py

Each overlay is rendered in Python by `render()` below, a subset of kustomize: resources (files and
folders), namespace, labels, images, patches (strategic merge by kind and name, lists of named
items merged by name), configMapGenerator with files and disableNameSuffixHash. A kustomization
field it does not know fails the test instead of being ignored. Every rendered object is validated
strictly against the Kubernetes OpenAPI schemas shipped in the kubernetes-validate package, and
names, ports, probes, annotations and limits are checked against the pod's config.properties.
The dashboard's objects (named galaxy-morph-dashboard) are checked against the server's, the
Dockerfile and scripts/dashboard.sh: the same image and authentication, the label store's URL from
a Secret, and a NetworkPolicy that lets in only the ingress controller.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # oldest and newest schema this deployment is checked on
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches",
             "configMapGenerator", "generatorOptions"}
DASHBOARD = "galaxy-morph-dashboard"  # the name of each of the dashboard's objects


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


def by_kind(objs: list[dict], dashboard: bool = False) -> dict[str, dict]:
    """{kind: object} of the server's objects, or with `dashboard` of the dashboard's."""
    kinds = {}
    for o in objs:
        if (o["metadata"]["name"] == DASHBOARD) == dashboard:
            assert o["kind"] not in kinds, f"two {o['kind']} objects"
            kinds[o["kind"]] = o
    return kinds


def flags(args: list[str]) -> dict[str, str]:
    """Streamlit's "--section.option value" pairs."""
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    return dict(zip(args[::2], args[1::2]))


def dockerfile_steps() -> list[str]:
    return [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


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
    assert set(by_kind(objs, dashboard=True)) == {"Deployment", "Service", "Ingress", "NetworkPolicy"}
    assert "Secret" not in {o["kind"] for o in objs}, "credentials are created in the cluster, not committed"
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


def test_dashboard_runs_the_server_image_with_the_store_url_from_a_secret(overlay):
    _, objs, kinds = overlay
    dash = by_kind(objs, dashboard=True)
    conf = properties(kinds["ConfigMap"]["data"]["config.properties"])
    dep, server = dash["Deployment"], kinds["Deployment"]
    pod = dep["spec"]["template"]
    labels, server_labels = dep["spec"]["selector"]["matchLabels"], server["spec"]["selector"]["matchLabels"]
    assert labels.items() <= pod["metadata"]["labels"].items()
    # neither selects the other's pods (the server's Service, PDB and NetworkPolicy use its selector)
    assert not labels.items() <= server["spec"]["template"]["metadata"]["labels"].items()
    assert not server_labels.items() <= pod["metadata"]["labels"].items()

    (c,) = pod["spec"]["containers"]
    (s,) = server["spec"]["template"]["spec"]["containers"]
    assert c["image"] == s["image"]
    steps = dockerfile_steps()
    python = json.loads(next(x for x in steps if x.startswith("ENTRYPOINT")).split(None, 1)[1])[0]
    assert c["workingDir"] == next(x for x in steps if x.startswith("WORKDIR")).split()[1]
    assert c["command"][:4] == [python, "-m", "streamlit", "run"]
    app = c["command"][4]
    assert (REPO / app).is_file() and f"COPY {app.split('/')[0]} {app.split('/')[0]}" in steps
    ignored = (REPO / ".dockerignore").read_text().split()
    assert app.split("/")[0] not in ignored, "the image's build context must hold the dashboard"

    opts = flags(c["args"])
    script = dict(re.findall(r"(--(?:server|browser|client)\.\w+) (\S+)",
                             (REPO / "scripts" / "dashboard.sh").read_text()))
    for opt, value in script.items():  # scripts/dashboard.sh's settings; its address and port are variables
        if not value.startswith('"$'):
            assert opts[opt] == value, opt
    assert opts["--server.address"] == "0.0.0.0" and opts["--server.headless"] == "true"
    (port,) = c["ports"]
    assert int(opts["--server.port"]) == port["containerPort"]
    base = opts["--server.baseUrlPath"].strip("/")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": f"/{base}/_stcore/health", "port": port["name"]}

    env = {e["name"]: e for e in c["env"]}
    ref = env["GALAXY_LABELS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"] and "value" not in env["GALAXY_LABELS"]
    assert not any("://" in e.get("value", "") for e in env.values()), "no store URL in the manifests"
    svc = kinds["Service"]
    assert env["TS_HOST"]["value"] == svc["metadata"]["name"]
    svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    for api in ("inference", "management", "metrics"):
        assert int(env[f"TS_{api.upper()}_PORT"]["value"]) == svc_ports[api] == port_of(conf[f"{api}_address"])
    # no key file and no token: the pods it talks to run with token authorisation off
    assert "TS_KEY_FILE" not in env and conf["disable_token_authorization"] == "true"

    writable = [m["mountPath"] for m in c["volumeMounts"]]
    assert any(env["HOME"]["value"] == w or env["HOME"]["value"].startswith(w + "/") for w in writable)
    assert "/tmp" in writable
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and pod["spec"]["automountServiceAccountToken"] is False
    res = c["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    assert "nvidia.com/gpu" not in res.get("limits", {})

    dsvc = dash["Service"]
    assert dsvc["spec"]["selector"] == labels
    assert [(p["name"], p["port"], p["targetPort"]) for p in dsvc["spec"]["ports"]] == \
        [(port["name"], port["containerPort"], port["name"])]


def test_dashboard_ingress_is_behind_the_same_authentication(overlay):
    _, objs, kinds = overlay
    dash = by_kind(objs, dashboard=True)
    ing, api = dash["Ingress"], kinds["Ingress"]
    a = ing["metadata"]["annotations"]
    for key in ("auth-type", "auth-secret", "auth-realm"):
        key = f"nginx.ingress.kubernetes.io/{key}"
        assert a[key] == api["metadata"]["annotations"][key], key
    assert ing["spec"]["ingressClassName"] == api["spec"]["ingressClassName"]
    assert ing["spec"]["tls"] == api["spec"]["tls"]
    assert [r["host"] for r in ing["spec"]["rules"]] == [r["host"] for r in api["spec"]["rules"]]

    (c,) = dash["Deployment"]["spec"]["template"]["spec"]["containers"]
    opts = flags(c["args"])
    (path,) = [p for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
    assert path["path"] == "/" + opts["--server.baseUrlPath"].strip("/") and path["pathType"] == "Prefix"
    (svc_port,) = dash["Service"]["spec"]["ports"]
    assert path["backend"]["service"] == {"name": dash["Service"]["metadata"]["name"],
                                          "port": {"name": svc_port["name"]}}
    assert "nginx.ingress.kubernetes.io/rewrite-target" not in a  # Streamlit serves under the prefix itself
    assert a["nginx.ingress.kubernetes.io/proxy-body-size"] == opts["--server.maxUploadSize"] + "m"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):  # the websocket stays open
        assert int(a[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 600
    assert a["nginx.ingress.kubernetes.io/affinity"] == "cookie"


def test_dashboard_network_policy_admits_only_the_ingress_and_reaches_server_and_store(overlay):
    _, objs, kinds = overlay
    dash = by_kind(objs, dashboard=True)
    pol = dash["NetworkPolicy"]
    assert pol["spec"]["podSelector"]["matchLabels"] == dash["Deployment"]["spec"]["selector"]["matchLabels"]
    assert sorted(pol["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    (rule,) = pol["spec"]["ingress"]
    (port,) = dash["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [p["port"] for p in rule["ports"]] == [port["name"]]
    (peer,) = rule["from"]
    assert set(peer) == {"namespaceSelector"} and peer["namespaceSelector"]["matchLabels"], \
        "only the ingress controller's namespace: the dashboard itself authenticates no one"

    conf = properties(kinds["ConfigMap"]["data"]["config.properties"])
    ts_ports = {port_of(conf[f"{api}_address"]): api for api in ("inference", "management", "metrics")}
    server_labels = kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    to_server = [r for r in pol["spec"]["egress"]
                 if r.get("to") == [{"podSelector": {"matchLabels": server_labels}}]]
    assert len(to_server) == 1 and {p["port"] for p in to_server[0]["ports"]} == set(ts_ports)
    egress_ports = {p["port"] for r in pol["spec"]["egress"] for p in r["ports"]}
    assert 5432 in egress_ports and 53 in egress_ports  # PostgreSQL, DNS
    for r in pol["spec"]["egress"]:
        for peer in r.get("to", []):
            if "ipBlock" in peer:  # the internet only, not the cluster's private networks
                assert set(peer["ipBlock"]["except"]) >= {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}

    # The server's own policy admits the dashboard (a pod of the same namespace) on each of those ports.
    admitted = {}
    for r in kinds["NetworkPolicy"]["spec"]["ingress"]:
        for p in r["ports"]:
            admitted.setdefault(p["port"], []).extend(r["from"])
    for api in ts_ports.values():
        assert {"podSelector": {}} in admitted[api] or {"namespaceSelector": {}} in admitted[api], api
