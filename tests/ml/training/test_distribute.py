"""Strategy choice and TF_CONFIG checks (ml/distribute.py): every bad setting fails with a
message naming it, before any MLflow run; workers find each other over loopback."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pytest
from support.helpers import PortClash, candidate_port, refused_port, start_on_free_port
from typer.testing import CliRunner

from ml.config import load_config
from ml.training.distribute import DistributionError, global_batch_problem, is_chief, parse_tf_config, plan_distribution, wait_for_cluster


def _tf_config(workers: list[str], index: int = 0, task_type: str = "worker", chief: list[str] | None = None) -> str:
    cluster: dict = {"worker": workers}
    if chief is not None:
        cluster["chief"] = chief
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_unknown_strategy_is_rejected_by_config_and_plan() -> None:
    with pytest.raises(ValueError, match=r"distribute_strategy='tpu_pod' is unknown: use one_device, mirrored or "
                                         r"multi_worker_mirrored"):
        load_config(None, {"training.distribute_strategy": "tpu_pod"})
    with pytest.raises(DistributionError, match="'tpu_pod' is unknown"):
        plan_distribution("tpu_pod", tf_config=None)


@pytest.mark.parametrize(("raw", "message"), [
    ("{not json", r"TF_CONFIG is not valid JSON .*line 1 column 2"),
    ("[1, 2]", r"must be a JSON object with 'cluster' and 'task', got list"),
    ('{"task": {"type": "worker", "index": 0}}', r"no 'cluster' entry"),
    ('{"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}}', r"no 'task' entry"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', r"cluster.worker must be a non-empty list"),
    (_tf_config(["127.0.0.1:2222", "127.0.0.1:2223"], index=2),
     r"task.index=2 names worker 2, but cluster.worker lists only 2 address\(es\) \(indexes 0..1\)"),
    (_tf_config(["127.0.0.1:2222"], index=-1), r"task.index=-1"),
    (_tf_config(["127.0.0.1:2222"], task_type="chief"), r"task.type='chief' is not in the cluster"),
    ('{"cluster": {"worker": ["127.0.0.1:2222"]}, "task": {"type": "worker", "index": "0"}}',
     r"task.index='0' must be an integer"),
    (_tf_config(["127.0.0.1"]), r"cluster.worker\[0\]='127.0.0.1' must be a 'host:port' string"),
    (_tf_config(["127.0.0.1:70000"]), r"port in 1..65535"),
    (_tf_config(["127.0.0.1:2222", "127.0.0.1:2222"]), r"cluster.worker\[1\]='127.0.0.1:2222' repeats cluster.worker\[0\]"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     r"task type\(s\) \['ps'\].*parameter servers"),
    (_tf_config(["127.0.0.1:2222"], chief=["127.0.0.1:2223", "127.0.0.1:2224"]), r"a cluster has one chief"),
])
def test_bad_tf_config_is_named(raw: str, message: str) -> None:
    with pytest.raises(DistributionError, match=message):
        plan_distribution("multi_worker_mirrored", tf_config=raw)


def test_multi_worker_without_tf_config_says_what_to_set() -> None:
    with pytest.raises(DistributionError, match="needs the TF_CONFIG environment variable"):
        plan_distribution("multi_worker_mirrored", tf_config=None)


def test_tf_config_is_ignored_by_single_process_strategies() -> None:
    raw = _tf_config(["127.0.0.1:2222", "127.0.0.1:2223"], index=1)
    for name in ("one_device", "mirrored"):
        plan = plan_distribution(name, tf_config=raw)
        assert plan.cluster is None and plan.is_chief and not plan.multi_worker


def test_chief_is_the_chief_task_or_worker_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = ["127.0.0.1:2222", "127.0.0.1:2223"]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief() is True
    assert is_chief(_tf_config(workers, 0)) is True
    assert is_chief(_tf_config(workers, 1)) is False
    with_chief = ["127.0.0.1:2224"]
    assert is_chief(_tf_config(workers, 0, chief=with_chief)) is False
    assert is_chief(_tf_config(workers, 0, task_type="chief", chief=with_chief)) is True
    monkeypatch.setenv("TF_CONFIG", _tf_config(workers, 1))
    assert is_chief() is False
    spec = parse_tf_config(_tf_config(workers, 1))
    assert spec.num_workers == 2 and spec.address == "127.0.0.1:2223" and [p[2] for p in spec.peers] == workers[:1]


def _wait_on_free_own_port(workers_but_own: list[str], timeout_s: float) -> tuple[int, DistributionError]:
    """wait_for_cluster as worker 0 on a fresh own port (retried if another process took it first)."""
    def attempt(own: int) -> tuple[int, DistributionError]:
        try:
            wait_for_cluster(parse_tf_config(_tf_config([f"127.0.0.1:{own}", *workers_but_own], 0)), timeout_s=timeout_s)
        except DistributionError as exc:
            if "cannot be opened here" in str(exc):
                raise PortClash(str(exc)) from None
            return own, exc
        raise AssertionError("wait_for_cluster returned although a worker never answered")

    return start_on_free_port(attempt)


def test_missing_worker_is_named_within_the_wait() -> None:
    with refused_port() as missing:  # bound, not listening: nothing answers there, nobody else can take it
        _, exc = _wait_on_free_own_port([f"127.0.0.1:{missing}"], timeout_s=1.0)
    assert re.search(rf"names worker 1 at 127.0.0.1:{missing}, but nothing answered there within 1s: start that worker",
                     str(exc)), exc


def test_own_port_taken_is_reported() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        spec = parse_tf_config(_tf_config([f"127.0.0.1:{port}", "127.0.0.1:1"], 0))  # never reached: own port first
        with pytest.raises(DistributionError, match=rf"worker 0 at 127.0.0.1:{port}.*port {port} cannot be opened here"):
            wait_for_cluster(spec, timeout_s=1.0)


def test_workers_started_together_find_each_other() -> None:
    """Each waiting worker listens on its own port, so two that start at once both proceed."""
    def together(addresses: list[str]) -> list[str]:
        errors: list[BaseException] = []

        def worker(index: int) -> None:
            try:
                wait_for_cluster(parse_tf_config(_tf_config(addresses, index)), timeout_s=20.0)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        if any("cannot be opened here" in str(e) for e in errors):
            raise PortClash(str(errors))  # another process took a candidate port first: fresh ports
        assert not errors and not any(t.is_alive() for t in threads)
        return addresses

    addresses = start_on_free_port(lambda port: together([f"127.0.0.1:{port}", f"127.0.0.1:{candidate_port()}"]))
    for address in addresses:  # the ports are free again for TensorFlow
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])))


def test_global_batch_must_leave_two_rows_per_replica() -> None:
    assert global_batch_problem(256, 1) is None and global_batch_problem(4, 2) is None
    assert "set training.batch_size >= 8" in global_batch_problem(6, 4)


# ------------------------------------------------ before any MLflow run starts
@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    from ml.data.synthetic import generate_synthetic, write_synthetic

    out = tmp_path / "data"
    write_synthetic(generate_synthetic(n_users=40, n_items=30, n_interactions=300, seed=5), out)
    return out


def _runs(db: Path) -> list:
    if not db.exists():
        return []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(("tf_config", "strategy", "message"), [
    ("{oops", "multi_worker_mirrored", "TF_CONFIG is not valid JSON"),
    (_tf_config(["127.0.0.1:2222"], index=3), "multi_worker_mirrored", "task.index=3"),
    ("", "gpu_farm", "distribute_strategy='gpu_farm' is unknown"),
    ("MISSING", "multi_worker_mirrored", "but nothing answered there within 1s"),
])
def test_train_command_fails_before_any_run(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch,
                                            tf_config: str, strategy: str, message: str) -> None:
    from pipelines.cli import app

    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("TOWEROPS_CLUSTER_WAIT_S", "1")

    def train(config: str):
        monkeypatch.setenv("TF_CONFIG", config)
        return CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"),
                                        "--set", f"training.distribute_strategy={strategy}"])

    if tf_config == "MISSING":  # worker 1 never answers: its port is held bound, not listening
        def on_own_port(own: int):
            result = train(_tf_config([f"127.0.0.1:{own}", f"127.0.0.1:{missing}"], 0))
            if "cannot be opened here" in result.output:
                raise PortClash(result.output)
            return result

        with refused_port() as missing:
            result = start_on_free_port(on_own_port)
    else:
        result = train(tf_config)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in " ".join(result.output.split())
    assert _runs(db) == [] and not (tmp_path / "m").exists()
