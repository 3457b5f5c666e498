"""Distribution strategies for training, picked by `training.distribute_strategy`.

- `one_device`: TensorFlow's default strategy (the first GPU if there is one, else the CPU);
  training runs exactly as without tf.distribute.
- `mirrored`: `tf.distribute.MirroredStrategy` over the GPUs of this machine (one replica
  on the CPU when there is none).
- `multi_worker_mirrored`: `tf.distribute.MultiWorkerMirroredStrategy` over the processes
  described by the `TF_CONFIG` environment variable, one process per worker:

      TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
                  "task": {"type": "worker", "index": 0}}'

  Worker 0 (or the `chief` task, when the cluster has one) is the chief: only it logs to
  MLflow and writes the model bundle.

Why the checks before the strategy: a MultiWorkerMirroredStrategy whose TF_CONFIG names a
worker that never starts blocks forever inside TensorFlow, ignoring SIGTERM. So TF_CONFIG is
parsed and validated first (JSON, cluster and task entries, task index, addresses), then
every other task is probed with short TCP connects until all answer or
`$TOWEROPS_CLUSTER_WAIT_S` (default 120 s) passes, and a missing one is named in the error.
All of this happens before any MLflow run starts.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ml.logs import get_logger
from ml.settings import get_settings

log = get_logger("training")

STRATEGIES: tuple[str, ...] = ("one_device", "mirrored", "multi_worker_mirrored")
TASK_TYPES: tuple[str, ...] = ("chief", "worker")
DEFAULT_CLUSTER_WAIT_S = 120.0
_UNSET: Any = object()
_ACTIVE: dict[tuple, "Distribution"] = {}  # one strategy per process and cluster (TF allows one MWMS)


class DistributionError(ValueError):
    """Bad distribution settings (strategy name, TF_CONFIG, unreachable workers)."""


# ------------------------------------------------------------------ TF_CONFIG
@dataclass(frozen=True)
class ClusterSpec:
    """A parsed, validated TF_CONFIG: the cluster's tasks and this process's task."""

    cluster: Mapping[str, tuple[str, ...]]
    task_type: str
    task_index: int

    @property
    def address(self) -> str:
        return self.cluster[self.task_type][self.task_index]

    @property
    def tasks(self) -> list[tuple[str, int, str]]:
        """(type, index, address) of every task, chief first."""
        return [(t, i, a) for t in TASK_TYPES for i, a in enumerate(self.cluster.get(t, ()))]

    @property
    def num_workers(self) -> int:
        return len(self.tasks)

    @property
    def is_chief(self) -> bool:
        """The `chief` task, or worker 0 when the cluster has no chief (TensorFlow's rule)."""
        if self.cluster.get("chief"):
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def peers(self) -> list[tuple[str, int, str]]:
        return [t for t in self.tasks if (t[0], t[1]) != (self.task_type, self.task_index)]

    def describe(self) -> str:
        return f"{self.task_type} {self.task_index} of {self.num_workers} at {self.address}"

    def to_json(self) -> str:
        return json.dumps({"cluster": {k: list(v) for k, v in self.cluster.items()},
                           "task": {"type": self.task_type, "index": self.task_index}}, sort_keys=True)


def _split_address(address: Any, where: str) -> tuple[str, int]:
    if not isinstance(address, str) or ":" not in address:
        raise DistributionError(f"TF_CONFIG {where}={address!r} must be a 'host:port' string, e.g. '10.0.0.2:2222'")
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not host or not 1 <= port <= 65535:
        raise DistributionError(
            f"TF_CONFIG {where}={address!r} must be 'host:port' with a port in 1..65535, e.g. '10.0.0.2:2222'")
    return host, port


def parse_tf_config(raw: str) -> ClusterSpec:
    """Parse and validate a TF_CONFIG JSON string; every problem names the entry and the fix."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DistributionError(
            f"TF_CONFIG is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
            "set it to e.g. '{\"cluster\": {\"worker\": [\"host1:2222\", \"host2:2222\"]}, "
            "\"task\": {\"type\": \"worker\", \"index\": 0}}'") from None
    if not isinstance(data, dict):
        raise DistributionError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got {type(data).__name__}")
    cluster_raw, task = data.get("cluster"), data.get("task")
    if not isinstance(cluster_raw, dict) or not cluster_raw:
        raise DistributionError("TF_CONFIG has no 'cluster' entry (or it is empty): add "
                                "\"cluster\": {\"worker\": [\"host1:2222\", \"host2:2222\"]}")
    unsupported = sorted(set(cluster_raw) - set(TASK_TYPES))
    if unsupported:
        raise DistributionError(
            f"TF_CONFIG cluster has task type(s) {unsupported}: MultiWorkerMirroredStrategy uses only "
            f"{list(TASK_TYPES)}; remove the others (parameter servers and evaluators are not used here)")
    cluster: dict[str, tuple[str, ...]] = {}
    seen: dict[tuple[str, int], str] = {}
    for task_type, addresses in cluster_raw.items():
        if not isinstance(addresses, list) or not addresses:
            raise DistributionError(f"TF_CONFIG cluster.{task_type} must be a non-empty list of 'host:port' strings")
        if task_type == "chief" and len(addresses) != 1:
            raise DistributionError(f"TF_CONFIG cluster.chief lists {len(addresses)} addresses: a cluster has one chief")
        for i, address in enumerate(addresses):
            where = f"cluster.{task_type}[{i}]"
            key = _split_address(address, where)
            if key in seen:
                raise DistributionError(f"TF_CONFIG {where}={address!r} repeats {seen[key]}: each task needs its own port")
            seen[key] = where
        cluster[task_type] = tuple(addresses)
    if not isinstance(task, dict):
        raise DistributionError("TF_CONFIG has no 'task' entry: add \"task\": {\"type\": \"worker\", \"index\": N} "
                                "with this process's place in the cluster")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise DistributionError(
            f"TF_CONFIG task.type={task_type!r} is not in the cluster (which has {sorted(cluster)}): "
            "set task.type to one of those")
    if isinstance(index, bool) or not isinstance(index, int):
        raise DistributionError(f"TF_CONFIG task.index={index!r} must be an integer")
    n = len(cluster[task_type])
    if not 0 <= index < n:
        raise DistributionError(
            f"TF_CONFIG task.index={index} names {task_type} {index}, but cluster.{task_type} lists only {n} "
            f"address(es) (indexes 0..{n - 1}): add its address to cluster.{task_type} or fix task.index")
    return ClusterSpec(cluster=cluster, task_type=task_type, task_index=index)


def is_chief(tf_config: str | None = _UNSET) -> bool:
    """True for the process that logs to MLflow and saves the model: no TF_CONFIG (a single
    process), the `chief` task, or worker 0 of a cluster without chief."""
    raw = os.environ.get("TF_CONFIG") if tf_config is _UNSET else tf_config
    if not raw or not raw.strip():
        return True
    return parse_tf_config(raw).is_chief


# ----------------------------------------------------------------------- plan
@dataclass(frozen=True)
class DistributionPlan:
    """What to create, checked without TensorFlow: the strategy name and, for several workers, the cluster."""

    strategy: str
    cluster: ClusterSpec | None = None

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def multi_worker(self) -> bool:
        return self.strategy == "multi_worker_mirrored"

    def describe(self) -> str:
        return self.strategy + (f" ({self.cluster.describe()})" if self.cluster else "")


def plan_distribution(strategy: str | Any, tf_config: str | None = _UNSET) -> DistributionPlan:
    """Validate the strategy name (or a config's `training.distribute_strategy`) and TF_CONFIG."""
    name = getattr(getattr(strategy, "training", None), "distribute_strategy", strategy)
    if name not in STRATEGIES:
        raise DistributionError(f"training.distribute_strategy={name!r} is unknown: use one of {', '.join(STRATEGIES)}")
    raw = os.environ.get("TF_CONFIG") if tf_config is _UNSET else tf_config
    raw = raw if raw and raw.strip() else None
    if name != "multi_worker_mirrored":
        if raw:
            log.warning("TF_CONFIG is set but training.distribute_strategy=%s: ignoring it, this process trains "
                        "alone (set training.distribute_strategy=multi_worker_mirrored to train as a cluster)", name)
        return DistributionPlan(name)
    if raw is None:
        raise DistributionError(
            "training.distribute_strategy=multi_worker_mirrored needs the TF_CONFIG environment variable, e.g. "
            "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:2222\", \"host2:2222\"]}, \"task\": {\"type\": "
            "\"worker\", \"index\": 0}}' (index 1 on the second worker); use one_device or mirrored on one machine")
    return DistributionPlan(name, parse_tf_config(raw))


# ------------------------------------------------------------------ cluster
def _can_connect(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except socket.gaierror as exc:
        raise DistributionError(f"TF_CONFIG names host {host!r}, which does not resolve ({exc}): fix the address") from None
    except OSError:
        return False


def wait_for_cluster(spec: ClusterSpec, timeout_s: float | None = None, probe_timeout_s: float = 0.5,
                     linger_s: float = 3.0) -> None:
    """Return once every other task of the cluster accepts TCP connections; else a clear error.

    While waiting, this process listens on its own port, so workers started at the same time
    see each other. Once all peers answered it keeps listening until each peer has connected
    once (or `linger_s` passed), so a peer still probing is not left waiting on a closed port;
    then the listener is closed for TensorFlow to bind the port.
    """
    if timeout_s is None:
        timeout_s = get_settings().cluster_wait_s
    _, own_port = _split_address(spec.address, "own address")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", own_port))
        listener.listen(64)
        listener.setblocking(False)
    except OSError as exc:
        listener.close()
        raise DistributionError(
            f"this process is {spec.task_type} {spec.task_index} at {spec.address} in TF_CONFIG, but port {own_port} "
            f"cannot be opened here ({exc.strerror or exc}): free the port or give this task another one in "
            "TF_CONFIG (on every worker)") from None
    accepted = 0

    def accept_all() -> None:
        nonlocal accepted
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.close()
            accepted += 1

    try:
        pending = {(t, i): address for t, i, address in spec.peers}
        deadline = time.monotonic() + timeout_s
        if pending:
            log.info("%s: waiting up to %.0fs for %d other worker(s): %s", spec.describe(), timeout_s, len(pending),
                     ", ".join(pending.values()))
        while pending:
            accept_all()
            for key, address in list(pending.items()):
                host, port = _split_address(address, "address")
                if _can_connect(host, port, probe_timeout_s):
                    del pending[key]
            if not pending:
                break
            if time.monotonic() >= deadline:
                missing = ", ".join(f"{t} {i} at {a}" for (t, i), a in sorted(pending.items()))
                raise DistributionError(
                    f"TF_CONFIG names {missing}, but nothing answered there within {timeout_s:g}s: start that "
                    "worker (same cluster, its own task index), fix its address, or remove it from TF_CONFIG; "
                    "TOWEROPS_CLUSTER_WAIT_S sets how long to wait")
            time.sleep(0.2)
        linger_until = time.monotonic() + linger_s
        while accepted < len(spec.peers) and time.monotonic() < linger_until:
            accept_all()
            time.sleep(0.05)
    finally:
        listener.close()


# --------------------------------------------------------------- strategies
@dataclass
class Distribution:
    """A created strategy and the plan it came from."""

    plan: DistributionPlan
    strategy: Any = field(repr=False)

    @property
    def name(self) -> str:
        return self.plan.strategy

    @property
    def is_chief(self) -> bool:
        return self.plan.is_chief

    @property
    def multi_worker(self) -> bool:
        return self.plan.multi_worker

    @property
    def distributed(self) -> bool:
        """True when variables live under a tf.distribute strategy (anything but one_device)."""
        return self.plan.strategy != "one_device"

    @property
    def num_replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def num_workers(self) -> int:
        return self.plan.cluster.num_workers if self.plan.cluster else 1

    def tags(self) -> dict[str, str]:
        """What MLflow records about the distribution."""
        return {"towerops.distribute_strategy": self.name, "towerops.num_replicas": str(self.num_replicas),
                "towerops.num_workers": str(self.num_workers)}


def start_distribution(plan: DistributionPlan, wait_s: float | None = None) -> Distribution:
    """Create the plan's strategy (once per process); for several workers, wait for them first."""
    key = (plan.strategy, plan.cluster.to_json() if plan.cluster else None)
    if key in _ACTIVE:
        return _ACTIVE[key]
    import tensorflow as tf

    if plan.strategy == "one_device":
        return Distribution(plan, tf.distribute.get_strategy())
    if plan.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d replica(s): %s", strategy.num_replicas_in_sync,
                 ", ".join(strategy.extended.worker_devices))
        dist = Distribution(plan, strategy)
    else:
        spec = plan.cluster
        assert spec is not None
        if any(prev.multi_worker for prev in _ACTIVE.values()):
            raise DistributionError("a MultiWorkerMirroredStrategy already runs in this process with another "
                                    "TF_CONFIG; one process joins one cluster")
        wait_for_cluster(spec, wait_s)
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({k: list(v) for k, v in spec.cluster.items()}),
            task_type=spec.task_type, task_id=spec.task_index, rpc_layer="grpc")
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        except RuntimeError as exc:
            raise DistributionError(
                f"cannot create MultiWorkerMirroredStrategy ({exc}): it must be created before TensorFlow runs "
                "anything in this process; train in a fresh process (towerops train / python -m pipelines.cli "
                "train)") from None
        log.info("MultiWorkerMirroredStrategy: %s, %d replica(s) in sync, chief=%s", spec.describe(),
                 strategy.num_replicas_in_sync, spec.is_chief)
        dist = Distribution(plan, strategy)
    _ACTIVE[key] = dist
    return dist


def setup_distribution(config: Any, tf_config: str | None = _UNSET, wait_s: float | None = None) -> Distribution:
    """Plan and start the strategy a config asks for."""
    return start_distribution(plan_distribution(config, tf_config), wait_s)


def global_batch_problem(batch_size: int, num_replicas: int) -> str | None:
    """Why `training.batch_size` cannot be split over the replicas, or None.

    training.batch_size is the global batch: each replica takes batch_size / replicas rows and
    draws its in-batch negatives from them, so each needs at least two rows.
    """
    if num_replicas > 1 and batch_size < 2 * num_replicas:
        return (f"training.batch_size={batch_size} is the global batch; split over {num_replicas} replicas it "
                f"leaves fewer than 2 rows per replica for in-batch negatives: set training.batch_size >= "
                f"{2 * num_replicas}")
    return None
