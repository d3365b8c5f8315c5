"""The Kubernetes manifests (deploy/kubernetes): every overlay renders with `kubectl kustomize`,
validates strictly against the schemas of the Kubernetes version we support, and keeps the
invariants operators rely on (replicas, probes, resources, non-root read-only containers, a
disruption budget per service, network policies, a migration Job, secrets referenced and never
committed, pinned image tags)."""

import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
# The oldest Kubernetes release the manifests are validated against (docs/operations.md).
KUBERNETES_VERSION = "1.32.0"
SERVICES = {"qm-api": 8003, "qm-orchestrator": 8001, "qm-finops": 8002, "qm-router": 8080}
PUBLIC = {"qm-api", "qm-router"}


def render(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise AssertionError("kubectl is missing: it renders the Kustomize overlays (install kubectl)")
    rendered = subprocess.run([kubectl, "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True)
    if rendered.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed: {rendered.stderr}")
    return rendered.stdout


class Overlays(unittest.TestCase):
    def test_every_overlay_renders_validates_and_keeps_the_invariants(self):
        overlays = sorted(path.name for path in OVERLAYS.iterdir() if path.is_dir())
        self.assertEqual(overlays, ["prod", "staging"])
        for overlay in overlays:
            with self.subTest(overlay=overlay):
                text = render(overlay)
                self.validate(text)
                self.check(overlay, [doc for doc in yaml.safe_load_all(text) if doc])

    def validate(self, text):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as rendered:
            rendered.write(text)
            rendered.flush()
            validator = ROOT / ".venv" / "bin" / "kubernetes-validate"
            if not validator.exists():
                raise AssertionError("kubernetes-validate is missing: run `make venv`")
            checked = subprocess.run(
                [str(validator), "--strict", "-k", KUBERNETES_VERSION, rendered.name], capture_output=True, text=True)
            self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)

    def check(self, overlay, docs):
        by_kind = {}
        for doc in docs:
            by_kind.setdefault(doc["kind"], []).append(doc)
        namespace = f"qm-{overlay}"
        self.assertEqual([doc["metadata"]["name"] for doc in by_kind["Namespace"]], [namespace])
        self.assertNotIn("Secret", by_kind, "secrets are created by the operator, never committed")
        deployments = {doc["metadata"]["name"]: doc for doc in by_kind["Deployment"]}
        self.assertEqual(set(deployments), set(SERVICES))
        budgets = {doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for doc in by_kind["PodDisruptionBudget"]}
        self.assertEqual(budgets, set(SERVICES), "a disruption budget per service")
        for name, deployment in deployments.items():
            self.assertEqual(deployment["metadata"]["namespace"], namespace)
            self.assertGreaterEqual(deployment["spec"]["replicas"], 2, name)
            self.assertEqual(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0, name)
            pod = deployment["spec"]["template"]["spec"]
            self.assertIs(pod["securityContext"]["runAsNonRoot"], True, name)
            self.assertIs(pod["automountServiceAccountToken"], False, name)
            [container] = pod["containers"]
            image = container["image"]
            self.assertRegex(image, r"^[^:]+:[0-9][0-9A-Za-z.+-]*$", f"{name}: a pinned version tag")
            self.assertIs(container["securityContext"]["readOnlyRootFilesystem"], True, name)
            self.assertIs(container["securityContext"]["allowPrivilegeEscalation"], False, name)
            self.assertEqual(container["securityContext"]["capabilities"]["drop"], ["ALL"], name)
            self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz", name)
            self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz", name)
            resources = container["resources"]
            self.assertTrue({"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], name)
            self.assertEqual(container["ports"][0]["containerPort"], SERVICES[name], name)
            sources = [next(iter(source.values()))["name"] for source in container["envFrom"]]
            self.assertIn("qm-secrets", sources, name)
            self.assertTrue(any(source.startswith("qm-config") for source in sources), name)
        config = by_kind["ConfigMap"][0]["data"]
        self.assertEqual(config["QM_ENV"], overlay)
        [job] = by_kind["Job"]
        self.assertEqual(job["spec"]["template"]["spec"]["containers"][0]["command"], ["qm", "migrate"])
        policies = {doc["metadata"]["name"]: doc for doc in by_kind["NetworkPolicy"]}
        self.assertEqual(policies["qm-default-deny"]["spec"]["podSelector"], {}, "ingress denied by default")
        public = policies["qm-public"]["spec"]["podSelector"]["matchExpressions"][0]["values"]
        self.assertEqual(set(public), PUBLIC, "only the api and the router are reachable from outside")
        stores = policies["qm-data-stores"]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        self.assertEqual(stores, {"app.kubernetes.io/part-of": "quartermaster"}, "data stores: the services only")

    def test_every_variable_an_overlay_needs_is_listed_in_its_env_example(self):
        for overlay in ("staging", "prod"):
            example = (ROOT / "env" / f"{overlay}.env.example").read_text()
            listed = {line.lstrip("# ").split("=", 1)[0].removesuffix("_FILE") for line in example.splitlines() if "=" in line}
            config = (OVERLAYS / overlay / "config.env").read_text()
            needed = {line.split("=", 1)[0] for line in config.splitlines() if "=" in line}
            # The Secret `qm-secrets` holds these.
            needed |= {"QM_DATABASE_URL", "QM_BUS_URL", "QM_ADMIN_PASSWORD"}
            self.assertEqual(needed - listed, set(), f"env/{overlay}.env.example misses variables the overlay needs")

    def test_a_broken_manifest_is_refused_by_the_validator(self):
        broken = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\nspec: { replicas: two }\n"
        with self.assertRaises(AssertionError):
            self.validate(broken)


if __name__ == "__main__":
    unittest.main()
