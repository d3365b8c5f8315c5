"""The alert rules (deploy/prometheus/alerts.yml) are valid and each is unit-tested firing and
not firing (alerts.test.yml, `promtool test rules`), each names a runbook that exists, the
Prometheus configuration loads them, and the Alertmanager example routes by severity and is
valid (`amtool check-config`). A wrong expectation makes promtool fail, so the tests can fail."""

import json
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"


def tool(name, package):
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is missing: install Debian's {package} (`make services` does)")
    return found


def run(*command):
    return subprocess.run(list(command), capture_output=True, text=True)


class Alerts(unittest.TestCase):
    def rules(self):
        return json.loads((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]

    def test_the_rules_are_valid_and_each_fires_and_stays_quiet_in_its_unit_test(self):
        promtool = tool("promtool", "prometheus")
        checked = run(promtool, "check", "rules", str(PROMETHEUS / "alerts.yml"))
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        tested = run(promtool, "test", "rules", str(PROMETHEUS / "alerts.test.yml"))
        self.assertEqual(tested.returncode, 0, tested.stdout + tested.stderr)
        tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
        covered = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
        for test in tests:
            expectations = [case["exp_alerts"] for case in test["alert_rule_test"]]
            self.assertIn([], expectations, "each alert is also shown quiet")
            self.assertTrue(any(expectations), "and firing")
        self.assertEqual(covered, {rule["alert"] for rule in self.rules()}, "every alert has a unit test")

    def test_a_wrong_expectation_fails(self):
        promtool = tool("promtool", "prometheus")
        tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())
        tests["tests"][0]["alert_rule_test"][1]["exp_alerts"][0]["exp_labels"]["severity"] = "ticket"
        with tempfile.TemporaryDirectory() as directory:
            shutil.copy(PROMETHEUS / "alerts.yml", directory)
            path = Path(directory) / "alerts.test.yml"
            path.write_text(yaml.safe_dump(tests))
            self.assertNotEqual(run(promtool, "test", "rules", str(path)).returncode, 0)

    def test_every_alert_names_a_runbook_that_exists(self):
        for rule in self.rules():
            runbook = ROOT / rule["annotations"]["runbook"]
            self.assertTrue(runbook.is_file(), f"{rule['alert']}: {runbook} is missing")
            self.assertIn(rule["alert"], runbook.read_text(), f"{runbook} names the alert that leads to it")
            self.assertIn(rule["labels"]["severity"], ("page", "ticket"), rule["alert"])

    def test_prometheus_loads_the_rules(self):
        promtool = tool("promtool", "prometheus")
        with tempfile.TemporaryDirectory() as directory:
            config = (PROMETHEUS / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", "alerts.yml")
            (Path(directory) / "prometheus.yml").write_text(config)
            shutil.copy(PROMETHEUS / "alerts.yml", directory)
            checked = run(promtool, "check", "config", str(Path(directory) / "prometheus.yml"))
            self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)

    def test_the_alertmanager_example_routes_by_severity(self):
        amtool = tool("amtool", "prometheus-alertmanager")
        path = PROMETHEUS / "alertmanager.yml"
        checked = run(amtool, "check-config", str(path))
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        for severity, receiver in (("page", "pager"), ("ticket", "tickets")):
            routed = run(amtool, "config", "routes", "test", f"--config.file={path}", f"severity={severity}", "alertname=X")
            self.assertEqual(routed.stdout.strip(), receiver, routed.stdout + routed.stderr)


if __name__ == "__main__":
    unittest.main()
