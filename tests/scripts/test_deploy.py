"""deploy/: the container recipe and one bank's Kubernetes manifests, rendered (kubectl kustomize
when kubectl is installed, a YAML check of the same files otherwise) with files made by the
real keygen and deploy_files steps, and the config they carry loaded by the node's own loader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import parse_node_config

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

import deploy_files  # noqa: E402
import members  # noqa: E402


@pytest.fixture
def k8s(tmp_path: Path) -> Path:
    """A copy of deploy/k8s with files/ filled for BANK-X of a 4-bank genesis made from public parts."""
    publics = []
    for _i, bank in enumerate(("BANK-A", "BANK-B", "BANK-C", "BANK-X")):
        folder = tmp_path / bank
        folder.mkdir()
        publics.append(
            members.keygen(
                members.BankFiles(folder, bank),
                f"node.{bank.lower()}.example",
                7000,
                7001,
                [(f"USD.{bank}", 2)],
            )
        )
    genesis = members.assemble_genesis("deploy-test", publics)
    genesis_path = tmp_path / "genesis.json"
    genesis_path.write_text(genesis.to_json())
    k8s = tmp_path / "k8s"
    shutil.copytree(ROOT / "deploy" / "k8s", k8s)
    deploy_files.write_files("BANK-X", tmp_path / "BANK-X", genesis_path, k8s / "files")
    return k8s


def _render(k8s: Path, use_kubectl: bool) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl") if use_kubectl else None
    if kubectl is not None:
        out = subprocess.run([kubectl, "kustomize", str(k8s)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    # No kubectl: the same resources, parsed, with what the generators would make.
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    docs = [
        d for name in kustomization["resources"] for d in yaml.safe_load_all((k8s / name).read_text()) if d
    ]
    for gen in kustomization["configMapGenerator"]:
        data = {f.split("=")[0]: (k8s / f.split("=")[1]).read_text() for f in gen["files"]}
        docs.append({"kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for gen in kustomization["secretGenerator"]:
        data = {f.split("=")[0]: (k8s / f.split("=")[1]).read_text() for f in gen["files"]}
        docs.append({"kind": "Secret", "metadata": {"name": gen["name"]}, "data": data})
    return docs


def _one(docs: list[dict[str, Any]], kind: str, prefix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, (kind, prefix, [d["metadata"]["name"] for d in docs])
    return found[0]


@pytest.mark.parametrize("use_kubectl", [True, False], ids=["kubectl-if-installed", "yaml"])
def test_the_manifests_render_and_carry_a_config_the_node_accepts(k8s: Path, use_kubectl: bool) -> None:
    docs = _render(k8s, use_kubectl)
    sts = _one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert sts["spec"]["replicas"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {p["containerPort"] for p in container["ports"]} == {
        deploy_files.REPLICA_PORT,
        deploy_files.API_PORT,
        deploy_files.METRICS_PORT,
    }
    assert container["readinessProbe"]["exec"]["command"][:1] == ["ledger-healthcheck"]
    assert "ledger.v1.LedgerService" in container["readinessProbe"]["exec"]["command"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert (
        mounts["data"] == "/var/lib/ledger"
        and sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    )
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert services == {"ledger-node-replica", "ledger-node-api", "ledger-node-metrics"}
    # The secrets and the config: what the pod mounts exists, and the node's loader takes it.
    key = _one(docs, "Secret", "ledger-node-key")
    tls = _one(docs, "Secret", "ledger-node-tls")
    assert set(key["data"]) == {"node.key"} and set(tls["data"]) == {"tls.crt", "tls.key"}
    cm = _one(docs, "ConfigMap", "ledger-node-config")
    config = parse_node_config(json.loads(cm["data"]["config.json"]), Path("/etc/ledger/config"))
    assert config.member_id == "BANK-X" and config.tls and config.log_path is None
    assert str(config.key_path).startswith(mounts["node-key"]) and str(config.tls_cert_path).startswith(
        mounts["tls"]
    )
    assert str(config.genesis_path).startswith(mounts["config"]) and str(config.data_dir).startswith(
        mounts["data"]
    )
    assert json.loads(cm["data"]["genesis.json"])["chain_id"] == "deploy-test"


def test_the_dockerfile_runs_the_node_as_a_non_root_user() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER 10001:10001" in text and 'ENTRYPOINT ["ledger-node"]' in text
    assert "ledger-healthcheck" in text and 'VOLUME ["/var/lib/ledger"]' in text
    scripts = (ROOT / "pyproject.toml").read_text()
    assert (
        'ledger-node = "node.__main__:main"' in scripts
        and 'ledger-healthcheck = "node.healthcheck:main"' in scripts
    )


def test_deploy_files_refuses_a_bank_that_is_not_in_genesis(k8s: Path, tmp_path: Path) -> None:
    assert (
        deploy_files.main(
            [
                "BANK-Z",
                "--bank-dir",
                str(tmp_path / "BANK-X"),
                "--genesis",
                str(tmp_path / "genesis.json"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
